"""nbval over the notebooks: the real-data chapter's checked cells need its data folder."""

from pathlib import Path

import pytest


def pytest_collection_modifyitems(config, items):
    from mstt_lib.params import real_data_params

    folder = Path(real_data_params().cohort)
    if folder.is_dir():
        return
    skip = pytest.mark.skip(reason=f"the real data ({folder}) is absent: chapter 08 skipped its steps")
    for item in items:
        if Path(str(item.fspath)).name.startswith("08_"):
            item.add_marker(skip)
