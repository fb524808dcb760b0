"""Real-boot helpers: build a Debian image (image), boot it under QEMU as an
Azure VM would look (qemu), and run the project's fake IMDS beside it (fake).

Plain helpers, no pytest: tests/test_realboot.py and bench scripts share them.
From a script: ``sys.path.insert(0, "<repo>/tests")`` then ``from vm import ...``.
"""
