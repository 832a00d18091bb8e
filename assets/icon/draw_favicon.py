"""Draws assets/icon/favicon.png, the explorer's page icon: a shield in the app's blue with a white
high-pass ring (TIP noises high frequencies and leaves DC). Run: python assets/icon/draw_favicon.py"""

from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 64
BLUE = (0, 114, 178)  # Okabe-Ito blue, as in app/components.py

img = Image.new("RGBA", (SIZE * 4, SIZE * 4), (0, 0, 0, 0))  # drawn at 4x, then downsampled (antialiasing)
draw = ImageDraw.Draw(img)
s = SIZE * 4
shield = [(s * 0.5, s * 0.04), (s * 0.9, s * 0.18), (s * 0.86, s * 0.55), (s * 0.5, s * 0.96),
          (s * 0.14, s * 0.55), (s * 0.1, s * 0.18)]
draw.polygon(shield, fill=BLUE)
c, r = s * 0.5, s * 0.2
draw.ellipse([c - r, c - r * 1.05, c + r, c + r * 0.95], outline=(255, 255, 255), width=int(s * 0.06))
draw.ellipse([c - s * 0.05, c - s * 0.06, c + s * 0.05, c + s * 0.04], fill=(255, 255, 255))
img.resize((SIZE, SIZE), Image.Resampling.LANCZOS).save(Path(__file__).with_name("favicon.png"), optimize=True)
