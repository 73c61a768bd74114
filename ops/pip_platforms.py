"""``--platform`` flags for ``pip download`` that accept every wheel a ``manylinux_2_Y_ARCH`` host can
install: pip matches only the exact tags it is given, and many wheels (kiwisolver, for one) are
tagged for an older glibc (manylinux2014 = manylinux_2_17) that such a host runs as well.

    python ops/pip_platforms.py manylinux_2_28_x86_64
    → --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 … --platform manylinux1_x86_64
"""

import re
import sys

LEGACY = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}


def platform_flags(platform: str) -> list[str]:
    match = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
    if not match:
        return ["--platform", platform]
    glibc_minor, arch = int(match[1]), match[2]
    tags = []
    for minor in range(glibc_minor, 4, -1):
        tags.append(f"manylinux_2_{minor}_{arch}")
        if minor in LEGACY:
            tags.append(f"{LEGACY[minor]}_{arch}")
    return [flag for tag in tags for flag in ("--platform", tag)]


if __name__ == "__main__":
    print(" ".join(platform_flags(sys.argv[1])))
