"""The process: workers, open-files limits, the garbage collector, systemd, log files."""
