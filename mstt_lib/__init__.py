"""mstt_lib."""
