"""TIP / DP / no defense on the bundled digits, as a Flower app (see ../README.md)."""
