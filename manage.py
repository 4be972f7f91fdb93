#!/usr/bin/env python
from hubimages.__main__ import main

if __name__ == "__main__":
    main()
