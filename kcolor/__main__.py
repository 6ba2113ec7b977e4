"""`python -m kcolor` runs the command-line interface."""

from kcolor.cli import main

if __name__ == "__main__":
    main()
