"""The daemon: what runs continuously (scheduler, IDLE workers, SMTP/LMTP listener, config reload)."""
