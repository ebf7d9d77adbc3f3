function (root, cfg) {
  // Decodes the packed sprites (see mstt_lib.viz.encode_volume) and draws three planes.
  var nx = cfg.shape[0], ny = cfg.shape[1], nz = cfg.shape[2];
  var sx = cfg.spacing[0], sy = cfg.spacing[1], sz = cfg.spacing[2];
  var state = {image: 0, contours: true, cross: true, pos: [nx >> 1, ny >> 1, nz >> 1]};
  var channels = null;  // images, then the mask bits: Uint8Array of nx*ny*nz, index (k*ny + j)*nx + i
  var maskChannel = cfg.images;
  var planes = [
    // name, fixed axis, width, height, voxel of display pixel (u, v) at index s
    {name: "axial", axis: 2, w: nx, h: ny, mmW: nx * sx, mmH: ny * sy,
     voxel: function (u, v, s) { return [nx - 1 - u, ny - 1 - v, s]; }},
    {name: "coronal", axis: 1, w: nx, h: nz, mmW: nx * sx, mmH: nz * sz,
     voxel: function (u, v, s) { return [nx - 1 - u, s, nz - 1 - v]; }},
    {name: "sagittal", axis: 0, w: ny, h: nz, mmW: ny * sy, mmH: nz * sz,
     voxel: function (u, v, s) { return [s, ny - 1 - u, nz - 1 - v]; }}
  ];
  var largest = Math.max(nx * sx, ny * sy, nz * sz);
  var scale = cfg.displayPx / largest;

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (text) e.textContent = text;
    return e;
  }
  var bar = el("div", {"class": "mstt-bar"});
  if (cfg.title) bar.appendChild(el("strong", {}, cfg.title));
  if (cfg.lossy) bar.appendChild(el("em", {"class": "mstt-lossy"},
    "images stored lossy (WebP quality " + cfg.lossy + ") to keep the page small; contours exact"));
  var group = "g" + Math.random().toString(36).slice(2);
  cfg.names.forEach(function (name, index) {
    var label = el("label", {});
    var radio = el("input", {type: "radio", name: group, value: String(index), "class": "mstt-modality"});
    if (index === 0) radio.checked = true;
    radio.addEventListener("change", function () { state.image = index; drawAll(); });
    label.appendChild(radio); label.appendChild(document.createTextNode(" " + name));
    bar.appendChild(label);
  });
  function toggle(text, key) {
    var label = el("label", {});
    var box = el("input", {type: "checkbox", "class": "mstt-" + key});
    box.checked = state[key];
    box.addEventListener("change", function () { state[key] = box.checked; drawAll(); });
    label.appendChild(box); label.appendChild(document.createTextNode(" " + text));
    bar.appendChild(label);
  }
  if (cfg.maskNames.length) toggle("contours", "contours");
  toggle("crosshair", "cross");
  var legend = el("span", {"class": "mstt-legend"});
  cfg.maskNames.forEach(function (name, b) {
    var swatch = el("span", {}); swatch.style.background = cfg.colours[b];
    legend.appendChild(swatch); legend.appendChild(document.createTextNode(name));
  });
  bar.appendChild(legend);
  root.appendChild(bar);
  var row = el("div", {"class": "mstt-planes"});
  root.appendChild(row);

  planes.forEach(function (plane) {
    var figure = el("figure", {"class": "mstt-plane mstt-" + plane.name});
    var canvas = el("canvas", {width: plane.w, height: plane.h});
    canvas.style.width = Math.round(plane.mmW * scale) + "px";
    canvas.style.height = Math.round(plane.mmH * scale) + "px";
    var n = cfg.shape[plane.axis];
    var slider = el("input", {type: "range", min: "0", max: String(n - 1), step: "1",
                              value: String(state.pos[plane.axis]), "aria-label": plane.name + " slice"});
    var caption = el("figcaption", {"class": "mstt-caption"});
    slider.addEventListener("input", function () {
      state.pos[plane.axis] = parseInt(slider.value, 10); drawAll();
    });
    canvas.addEventListener("click", function (event) {
      var rect = canvas.getBoundingClientRect();
      var u = Math.floor((event.clientX - rect.left) / rect.width * plane.w);
      var v = Math.floor((event.clientY - rect.top) / rect.height * plane.h);
      var voxel = plane.voxel(Math.min(Math.max(u, 0), plane.w - 1), Math.min(Math.max(v, 0), plane.h - 1),
                              state.pos[plane.axis]);
      state.pos = voxel; drawAll();
    });
    figure.appendChild(canvas); figure.appendChild(slider); figure.appendChild(caption);
    row.appendChild(figure);
    plane.canvas = canvas; plane.slider = slider; plane.caption = caption;
  });

  function value(c, i, j, k) { return channels[c][(k * ny + j) * nx + i]; }

  function draw(plane) {
    var ctx = plane.canvas.getContext("2d");
    var out = ctx.createImageData(plane.w, plane.h);
    var s = state.pos[plane.axis];
    var w = plane.w, h = plane.h, u, v, p, vox, g;
    var bits = new Uint8Array(w * h);
    for (v = 0; v < h; v++) {
      for (u = 0; u < w; u++) {
        vox = plane.voxel(u, v, s);
        g = value(state.image, vox[0], vox[1], vox[2]);
        p = 4 * (v * w + u);
        out.data[p] = g; out.data[p + 1] = g; out.data[p + 2] = g; out.data[p + 3] = 255;
        if (cfg.masks) bits[v * w + u] = value(maskChannel, vox[0], vox[1], vox[2]);
      }
    }
    if (state.contours) {
      // A contour pixel is inside the mask with a 4-neighbour outside it or at the edge
      // (mstt_lib.viz.mask_boundary is the same rule).
      cfg.maskNames.forEach(function (name, b) {
        var colour = cfg.colours[b], r = parseInt(colour.slice(1, 3), 16),
            gg = parseInt(colour.slice(3, 5), 16), bb = parseInt(colour.slice(5, 7), 16);
        function inside(x, y) { return x >= 0 && y >= 0 && x < w && y < h && ((bits[y * w + x] >> b) & 1); }
        for (v = 0; v < h; v++) for (u = 0; u < w; u++) {
          if (inside(u, v) && !(inside(u - 1, v) && inside(u + 1, v) && inside(u, v - 1) && inside(u, v + 1))) {
            p = 4 * (v * w + u); out.data[p] = r; out.data[p + 1] = gg; out.data[p + 2] = bb;
          }
        }
      });
    }
    ctx.putImageData(out, 0, 0);
    if (state.cross) {
      // Crosshair through the shared point, drawn at display resolution.
      var at = state.pos, cu, cv;
      if (plane.axis === 2) { cu = nx - 1 - at[0]; cv = ny - 1 - at[1]; }
      else if (plane.axis === 1) { cu = nx - 1 - at[0]; cv = nz - 1 - at[2]; }
      else { cu = ny - 1 - at[1]; cv = nz - 1 - at[2]; }
      ctx.fillStyle = "rgba(255,255,0,0.45)";
      ctx.fillRect(cu, 0, 1, h); ctx.fillRect(0, cv, w, 1);
    }
    plane.slider.value = String(s);
    plane.caption.textContent = plane.name + " " + (s + 1) + " / " + cfg.shape[plane.axis];
  }
  function drawAll() { if (channels) planes.forEach(draw); }

  var imgs = Array.prototype.slice.call(root.querySelectorAll("img.mstt-data"));
  function unpack(img) {
    // Greyscale sprite: the red channel holds the value; tile k at row floor(k / cols), column k % cols.
    var canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    var ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0);
    var rgba = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    var out = new Uint8Array(nx * ny * nz), cols = cfg.columns;
    for (var k = 0; k < nz; k++) {
      var r0 = Math.floor(k / cols) * ny, c0 = (k % cols) * nx;
      for (var j = 0; j < ny; j++) {
        var src = 4 * ((r0 + j) * canvas.width + c0), dst = (k * ny + j) * nx;
        for (var i = 0; i < nx; i++) out[dst + i] = rgba[src + 4 * i];
      }
    }
    return out;
  }
  function decode() {
    if (!imgs.every(function (img) { return img.complete && img.naturalWidth; })) return;
    if (channels) return;
    channels = imgs.map(unpack);
    var n = nx * ny * nz, k, q;
    // Start on the slice where the first mask is largest, if there is one.
    if (cfg.maskNames.length) {
      var best = -1, bestK = state.pos[2], sums = [0, 0, 0];
      for (k = 0; k < nz; k++) {
        var area = 0;
        for (q = k * nx * ny; q < (k + 1) * nx * ny; q++) if (channels[maskChannel][q] & 1) {
          area++; sums[0] += q % nx; sums[1] += Math.floor(q / nx) % ny; sums[2] += k;
        }
        if (area > best) { best = area; bestK = k; }
      }
      var total = 0;
      for (q = 0; q < n; q++) if (channels[maskChannel][q] & 1) total++;
      if (total) state.pos = [Math.round(sums[0] / total), Math.round(sums[1] / total), bestK];
    }
    drawAll();
    root.setAttribute("data-ready", "1");
  }
  imgs.forEach(function (img) { img.addEventListener("load", decode); });
  decode();
}
