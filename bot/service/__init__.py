"""The daemon itself: composition root, single-instance lock, systemd notify and watchdog."""
