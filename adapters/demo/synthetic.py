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
import unicodedata
from dataclasses import dataclass

SEED = "ndxp-synthetic-v1"
REFERENCE_DATE = dt.date(2026, 1, 1)
"""Data are as of this date (not today), so answers never drift."""
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
    if year >= REFERENCE_DATE.year:
        return None  # not born yet
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


def add_years(day: dt.date, years: int) -> dt.date:
    """``day`` moved by whole years; 29 February becomes 28 February in a common year."""
    try:
        return day.replace(year=day.year + years)
    except ValueError:
        return day.replace(year=day.year + years, day=28)


def age(p: Person) -> int:
    b, ref = p.birth_date, REFERENCE_DATE
    return ref.year - b.year - ((ref.month, ref.day) < (b.month, b.day))


def make_cccd(r: random.Random, *, gender: str, year: int, province: str | None = None) -> str:
    """A well-formed CCCD for someone of this gender and birth year (clamped to 1900-2025)."""
    year = min(max(year, 1900), REFERENCE_DATE.year - 1)
    century = (year - 1900) // 100
    digit = 2 * century + (0 if gender == "male" else 1)
    prov = province or r.choice(list(PROVINCES))
    return f"{prov}{digit}{year % 100:02d}{r.randrange(1_000_000):06d}"


def existing_person(r: random.Random, *, gender: str, year: int, province: str | None = None) -> Person:
    """Draw CCCDs until one exists in the population database (deterministic for ``r``)."""
    while True:
        p = person(make_cccd(r, gender=gender, year=year, province=province))
        if p is not None:
            return p


def normalise_name(name: str) -> str:
    """Names compare by NFC letters, case-insensitively, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFC", name).casefold().split())


# --------------------------------------------------------------------------
# Households (population database)

RELATIONS = ("chủ hộ", "vợ", "chồng", "con")


def household(p: Person) -> list[tuple[str, Person]]:
    """(relation, person) of the household where ``p`` is registered; ``p`` is in it."""
    r = rng("household", p.cccd)
    members: list[tuple[str, Person]] = [("chủ hộ" if age(p) >= 18 else "con", p)]
    if age(p) >= 22 and r.random() < 0.7:
        spouse_gender = "female" if p.gender == "male" else "male"
        year = min(REFERENCE_DATE.year - 18, p.birth_date.year + r.randint(-4, 4))
        members.append(
            ("vợ" if spouse_gender == "female" else "chồng",
             existing_person(r, gender=spouse_gender, year=year, province=p.birth_province_code))
        )  # fmt: skip
        for _ in range(r.randint(0, 3)):
            year = min(REFERENCE_DATE.year - 1, p.birth_date.year + r.randint(20, 38))
            members.append(("con", existing_person(r, gender=r.choice(["male", "female"]), year=year)))
    return members


# --------------------------------------------------------------------------
# Enterprises and tax

LEGAL_FORMS = {
    "llc": "Công ty trách nhiệm hữu hạn",
    "jsc": "Công ty cổ phần",
    "private": "Doanh nghiệp tư nhân",
    "partnership": "Công ty hợp danh",
}
NAME_WORDS = ["Thương mại", "Dịch vụ", "Xây dựng", "Công nghệ", "Sản xuất", "Vận tải",
              "Nông sản", "Du lịch", "Phần mềm", "Thực phẩm", "Đầu tư", "Môi trường"]  # fmt: skip
BRANDS = ["Hòa Phát", "Minh Long", "Sao Việt", "Phú Thịnh", "An Khang", "Đại Dương",
          "Trường Sơn", "Hưng Thịnh", "Bình Minh", "Thành Công", "Kim Ngân", "Hoàng Gia"]  # fmt: skip
VSIC = {"4620": "Bán buôn nông, lâm sản", "6201": "Lập trình máy vi tính",
        "4933": "Vận tải hàng hóa bằng đường bộ", "4100": "Xây dựng nhà các loại",
        "1079": "Sản xuất thực phẩm khác", "5510": "Dịch vụ lưu trú ngắn ngày"}  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class Enterprise:
    """A registered enterprise; its code is its 10-digit tax code."""

    code: str
    name: str
    legal_form: str
    registered_on: dt.date
    status: str
    province_code: str
    address: str
    industry_code: str
    charter_capital_vnd: int
    representative: Person


def enterprise(code: str) -> Enterprise | None:
    """The enterprise with this 10-digit code, or None."""
    if len(code) != 10 or not code.isdigit() or not exists("enterprise", code):
        return None
    r = rng("enterprise", code)
    form = r.choice(list(LEGAL_FORMS))
    name = f"{LEGAL_FORMS[form]} {r.choice(NAME_WORDS)} {r.choice(BRANDS)}".upper()
    province = r.choice(list(PROVINCES))
    founded = REFERENCE_DATE - dt.timedelta(days=r.randrange(30, 365 * 25))
    rep_year = r.randint(1955, 2000)
    return Enterprise(
        code=code,
        name=name,
        legal_form=form,
        registered_on=founded,
        status=r.choices(["active", "suspended", "dissolved"], [90, 6, 4])[0],
        province_code=province,
        address=f"Số {r.randrange(1, 500)} {r.choice(STREETS)}, {PROVINCES[province]}",
        industry_code=r.choice(list(VSIC)),
        charter_capital_vnd=r.choice([1, 2, 5, 10, 20, 50, 100, 500]) * 1_000_000_000,
        representative=existing_person(r, gender=r.choice(["male", "female"]), year=rep_year),
    )


# --------------------------------------------------------------------------
# Social insurance, health insurance

HOSPITALS = ["Bệnh viện Bạch Mai", "Bệnh viện Chợ Rẫy", "Bệnh viện Đà Nẵng",
             "Bệnh viện Đa khoa tỉnh", "Trạm y tế phường", "Bệnh viện Hữu nghị Việt Đức"]  # fmt: skip


def insurance_number(p: Person) -> str:
    """The 10-digit social insurance number of a person."""
    return f"{rng('bhxh-no', p.cccd).randrange(10**10):010d}"


# --------------------------------------------------------------------------
# Land parcels

LAND_USE = {"ONT": "Đất ở tại nông thôn", "ODT": "Đất ở tại đô thị",
            "LUC": "Đất chuyên trồng lúa nước", "CLN": "Đất trồng cây lâu năm",
            "SKC": "Đất cơ sở sản xuất phi nông nghiệp"}  # fmt: skip


# --------------------------------------------------------------------------
# Vehicles and driving licences

PLATE_PROVINCES = {
    "29": "Hà Nội", "30": "Hà Nội", "31": "Hà Nội", "32": "Hà Nội", "33": "Hà Nội",
    "40": "Hà Nội", "43": "Đà Nẵng", "12": "Lạng Sơn", "14": "Quảng Ninh", "15": "Hải Phòng",
    "36": "Thanh Hóa", "37": "Nghệ An", "51": "Hồ Chí Minh", "59": "Hồ Chí Minh",
    "60": "Đồng Nai", "65": "Cần Thơ", "75": "Thừa Thiên Huế", "92": "Quảng Nam",
}  # fmt: skip
CARS = [("Toyota", "Vios"), ("Hyundai", "Accent"), ("Kia", "Morning"), ("Mazda", "CX-5"),
        ("VinFast", "VF 8"), ("Ford", "Ranger"), ("Honda", "City"), ("Mitsubishi", "Xpander")]  # fmt: skip
COLOURS = ["trắng", "đen", "bạc", "đỏ", "xanh", "xám"]
LICENCE_CLASSES = ["A1", "A", "B", "C1", "C", "D", "B2"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Parcel:
    """A land parcel: province-commune-sheet-parcel."""

    parcel_id: str
    province: str
    area_m2: float
    land_use: str
    owner: Person
    certificate_number: str
    mortgaged: bool


def parcel(parcel_id: str) -> Parcel | None:
    """The parcel with this id (``PPP-CCCCC-S-N``), or None."""
    parts = parcel_id.split("-")
    if len(parts) != 4 or parts[0] not in PROVINCES or not exists("parcel", parcel_id):
        return None
    r = rng("parcel", parcel_id)
    return Parcel(
        parcel_id=parcel_id,
        province=PROVINCES[parts[0]],
        area_m2=round(r.uniform(40, 5000), 1),
        land_use=r.choice(list(LAND_USE)),
        owner=existing_person(r, gender=r.choice(["male", "female"]), year=r.randint(1945, 2000)),
        certificate_number=f"{r.choice('ABCDCS')}{r.choice('ABCDEFGHK')}{r.randrange(10**6):06d}",
        mortgaged=r.random() < 0.2,
    )
