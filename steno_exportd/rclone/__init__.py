"""Pushing to cloud and other stores through Debian's rclone: the ``rclone:<remote>`` target kind."""
