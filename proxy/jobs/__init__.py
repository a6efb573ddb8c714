"""Background jobs the admin API starts: warm-up (preload) jobs today."""
