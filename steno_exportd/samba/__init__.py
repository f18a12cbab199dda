"""The read-only Samba share: share.py writes and reloads the snippet, announce.py announces it over
mDNS, adapter.py follows the core's sharing switch."""
