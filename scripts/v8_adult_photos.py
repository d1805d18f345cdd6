"""Print the adult photos the shipped model v8 could have seen: the first 100 UTKFace photos of
each age 26 and over, in file-name order (what ../shared/data/utkface held until December 2026).
`minorage evaluate --exclude` leaves them out of a test split built from the whole release."""

from collections import defaultdict

from minorage import config

by_age: dict[int, list[str]] = defaultdict(list)
for name in sorted(p.name for p in config.utkface_dir().glob("*.jpg")):
    by_age[int(name.split("_", 1)[0])].append(name)
for age in sorted(a for a in by_age if a >= 26):
    print("\n".join(by_age[age][:100]))
