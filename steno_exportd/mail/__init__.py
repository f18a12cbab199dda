"""Mail adapter: sends what the core's outbox holds over SMTP (aiosmtplib): smtp.py one delivery, sender.py the loop."""
