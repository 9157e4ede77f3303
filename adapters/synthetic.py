"""Deterministic synthetic national data, derived from identifiers.

The same identifier always gives the same record: a seeded generator is
derived from the identifier itself, so the population is as large as the
identifier space without storing it. A fixed share of well-formed
identifiers (:data:`MISSING_PERCENT`) does not exist.

A person is keyed by the 12-digit CCCD; name, birth date and gender come only
from the CCCD, so every agency that knows the person agrees on them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from dataclasses import dataclass

SEED = "ndxp-synthetic-v1"
MISSING_PERCENT = 5
"""Percent of well-formed identifiers that no record exists for."""

PROVINCES: dict[str, str] = {
    "001": "Hà Nội", "002": "Hà Giang", "004": "Cao Bằng", "008": "Tuyên Quang",
    "010": "Lào Cai", "011": "Điện Biên", "015": "Yên Bái", "019": "Thái Nguyên",
    "020": "Lạng Sơn", "022": "Quảng Ninh", "024": "Bắc Giang", "025": "Phú Thọ",
    "026": "Vĩnh Phúc", "027": "Bắc Ninh", "030": "Hải Dương", "031": "Hải Phòng",
    "033": "Hưng Yên", "034": "Thái Bình", "035": "Hà Nam", "036": "Nam Định",
    "037": "Ninh Bình", "038": "Thanh Hóa", "040": "Nghệ An", "042": "Hà Tĩnh",
    "044": "Quảng Bình", "045": "Quảng Trị", "046": "Thừa Thiên Huế", "048": "Đà Nẵng",
    "049": "Quảng Nam", "051": "Quảng Ngãi", "052": "Bình Định", "054": "Phú Yên",
    "056": "Khánh Hòa", "058": "Ninh Thuận", "060": "Bình Thuận", "062": "Kon Tum",
    "064": "Gia Lai", "066": "Đắk Lắk", "068": "Lâm Đồng", "070": "Bình Phước",
    "072": "Tây Ninh", "074": "Bình Dương", "075": "Đồng Nai", "077": "Bà Rịa - Vũng Tàu",
    "079": "Hồ Chí Minh", "080": "Long An", "082": "Tiền Giang", "083": "Bến Tre",
    "084": "Trà Vinh", "086": "Vĩnh Long", "087": "Đồng Tháp", "089": "An Giang",
    "091": "Kiên Giang", "092": "Cần Thơ", "093": "Hậu Giang", "094": "Sóc Trăng",
    "095": "Bạc Liêu", "096": "Cà Mau",
}  # fmt: skip

FAMILY = ["Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng",
          "Bùi", "Đỗ", "Hồ", "Ngô", "Dương", "Lý"]  # fmt: skip
FAMILY_WEIGHTS = [38, 11, 9.5, 7, 5.1, 5, 4.5, 3.9, 3.5, 2.1, 2, 1.4, 1.3, 1.3, 1, 0.5]
MIDDLE = {"male": ["Văn", "Hữu", "Đức", "Minh", "Quốc", "Thành", "Công", "Gia"],
          "female": ["Thị", "Ngọc", "Thu", "Thanh", "Kim", "Phương", "Mai", "Bảo"]}  # fmt: skip
GIVEN = {"male": ["Anh", "Bình", "Cường", "Dũng", "Hải", "Hùng", "Khoa", "Long", "Nam",
                  "Phong", "Quân", "Sơn", "Thắng", "Tuấn", "Việt", "Vinh", "Đạt", "Hiếu"],
         "female": ["An", "Chi", "Dung", "Giang", "Hà", "Hạnh", "Hoa", "Hương", "Lan",
                    "Linh", "Mai", "Ngân", "Nhung", "Phương", "Thảo", "Trang", "Vy",
                    "Yến"]}  # fmt: skip
STREETS = ["Lê Lợi", "Trần Hưng Đạo", "Nguyễn Trãi", "Hai Bà Trưng", "Lý Thường Kiệt",
           "Quang Trung", "Điện Biên Phủ", "Hùng Vương", "Phan Chu Trinh", "Bạch Đằng"]  # fmt: skip


def rng(kind: str, identifier: str) -> random.Random:
    """A generator seeded by the record kind and its identifier (stable across runs)."""
    digest = hashlib.sha256(f"{SEED}|{kind}|{identifier}".encode()).digest()
    return random.Random(int.from_bytes(digest[:16], "big"))  # noqa: S311 - synthetic data


def exists(kind: str, identifier: str) -> bool:
    """Whether a well-formed identifier has a record (a fixed share does not)."""
    digest = hashlib.sha256(f"{SEED}|exists|{kind}|{identifier}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 >= MISSING_PERCENT


@dataclass(frozen=True, slots=True, kw_only=True)
class Person:
    """A citizen, derived from the CCCD alone."""

    cccd: str
    full_name: str
    gender: str
    birth_date: dt.date
    birth_province_code: str
    birth_province: str
    address: str


def parse_cccd(cccd: str) -> tuple[str, str, int] | None:
    """(province code, gender, birth year) of a well-formed CCCD, else None."""
    if len(cccd) != 12 or not cccd.isdigit() or cccd[:3] not in PROVINCES:
        return None
    century_gender = int(cccd[3])
    if century_gender > 5:
        return None
    century = 1900 + 100 * (century_gender // 2)
    gender = "male" if century_gender % 2 == 0 else "female"
    return cccd[:3], gender, century + int(cccd[4:6])


def person(cccd: str) -> Person | None:
    """The citizen with this CCCD, or None if malformed or not in the database."""
    parsed = parse_cccd(cccd)
    if parsed is None or not exists("person", cccd):
        return None
    province, gender, year = parsed
    r = rng("person", cccd)
    family = r.choices(FAMILY, FAMILY_WEIGHTS)[0]
    name = f"{family} {r.choice(MIDDLE[gender])} {r.choice(GIVEN[gender])}"
    birth = dt.date(year, 1, 1) + dt.timedelta(days=r.randrange(365))
    home = r.choice(list(PROVINCES))
    address = f"Số {r.randrange(1, 300)} {r.choice(STREETS)}, {PROVINCES[home]}"
    return Person(
        cccd=cccd,
        full_name=name,
        gender=gender,
        birth_date=birth,
        birth_province_code=province,
        birth_province=PROVINCES[province],
        address=address,
    )
