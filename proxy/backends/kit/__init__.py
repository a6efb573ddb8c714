"""What every store shares: one call helper (calls.py: counting, timing, error mapping,
retries), metered bodies and read windows (body.py), S3 list pages over store pages
(paging.py), staged multipart (multipart.py), key safety (keys.py), and the class that puts a
store's parts together into one Backend (front.py)."""
