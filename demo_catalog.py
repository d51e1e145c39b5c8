"""The demo catalog: believable categories, procedures, doctors and packages.

Prices are typical US ranges in whole dollars; doctors and their reviews are invented
(deterministically, so every seeded database is the same).
"""

import random
import re
from decimal import Decimal

from sqlalchemy import select

from models import PHYSICIAN_CREDENTIALS, Category, Doctor, Package, Procedure, db

CATEGORIES = [
    (
        "Injectables",
        "Wrinkle relaxers, dermal fillers and biostimulators given by injection, "
        "usually in under an hour with little or no downtime.",
    ),
    (
        "Skin Resurfacing",
        "Peels, microneedling and facials that renew the skin's surface for texture, "
        "tone, acne scars and glow.",
    ),
    (
        "Laser & Light",
        "Laser and light-based treatments for unwanted hair, sun damage, redness, "
        "veins, tattoos and fine lines.",
    ),
    (
        "Body Contouring",
        "Surgical and non-surgical ways to remove stubborn fat, firm muscle and "
        "reshape the body.",
    ),
    (
        "Facial Surgery",
        "Surgery of the nose, eyelids, face, neck and chin by facial and plastic "
        "surgeons.",
    ),
    (
        "Breast Surgery",
        "Augmentation, lift, reduction and reconstruction of the breast.",
    ),
    (
        "Hair Restoration",
        "Transplants and non-surgical treatments for thinning hair and hair loss.",
    ),
    (
        "Skin Tightening",
        "Ultrasound, radiofrequency and thread treatments that lift and tighten "
        "loose skin without surgery.",
    ),
]

# (name, category, price_min, price_max, recovery_time, short_description)
PROCEDURES = [
    ("Botox", "Injectables", 300, 800, "None",
     "Relaxes the muscles behind frown lines, forehead lines and crow's feet; "
     "results last three to four months."),
    ("Dysport", "Injectables", 300, 750, "None",
     "A botulinum toxin that spreads a little wider than Botox, often chosen for "
     "the forehead and crow's feet."),
    ("Xeomin", "Injectables", 300, 750, "None",
     "A 'naked' botulinum toxin without accessory proteins, for frown lines and "
     "forehead wrinkles."),
    ("Dermal Fillers", "Injectables", 600, 1500, "1-2 days",
     "Hyaluronic acid gels that restore lost volume and soften folds such as "
     "smile lines."),
    ("Lip Fillers", "Injectables", 500, 1200, "1-3 days",
     "Adds shape, definition and volume to the lips with hyaluronic acid."),
    ("Cheek Fillers", "Injectables", 700, 1600, "1-2 days",
     "Lifts and contours the mid-face by restoring volume over the cheekbones."),
    ("Tear Trough Filler", "Injectables", 700, 1400, "2-4 days",
     "Softens hollows and dark circles under the eyes with a fine filler."),
    ("Jawline Filler", "Injectables", 800, 2000, "1-3 days",
     "Defines the jawline and chin for a sharper profile."),
    ("Kybella", "Injectables", 1200, 2400, "3-7 days",
     "Injectable deoxycholic acid that permanently destroys fat cells under the "
     "chin."),
    ("Sculptra", "Injectables", 900, 1800, "1-2 days",
     "A poly-L-lactic acid biostimulator that rebuilds collagen gradually over "
     "several sessions."),
    ("Chemical Peel", "Skin Resurfacing", 150, 1500, "1-14 days",
     "Acid solutions remove damaged outer layers of skin to improve tone, "
     "texture and pigmentation."),
    ("Microdermabrasion", "Skin Resurfacing", 100, 250, "None",
     "Gentle mechanical exfoliation that brightens dull skin and refines pores."),
    ("Microneedling", "Skin Resurfacing", 250, 700, "1-3 days",
     "Tiny controlled punctures stimulate collagen to improve acne scars and "
     "fine lines."),
    ("Dermaplaning", "Skin Resurfacing", 80, 250, "None",
     "A sterile blade removes dead skin and peach fuzz for a smooth finish."),
    ("HydraFacial", "Skin Resurfacing", 150, 350, "None",
     "Cleanses, extracts and hydrates in one multi-step medical facial."),
    ("Morpheus8", "Skin Resurfacing", 1000, 2500, "2-5 days",
     "Radiofrequency microneedling that tightens skin and remodels deeper "
     "tissue."),
    ("PRP Facial", "Skin Resurfacing", 600, 1500, "2-4 days",
     "Microneedling with platelet-rich plasma from your own blood, also called "
     "the vampire facial."),
    ("Laser Hair Removal", "Laser & Light", 200, 900, "None",
     "Laser energy disables hair follicles for long-term reduction of unwanted "
     "hair."),
    ("IPL Photofacial", "Laser & Light", 300, 700, "1-3 days",
     "Intense pulsed light fades sun spots, redness and broken capillaries."),
    ("Fraxel Laser", "Laser & Light", 1000, 1800, "3-7 days",
     "Fractional laser resurfacing for sun damage, fine lines and scars."),
    ("CO2 Laser Resurfacing", "Laser & Light", 2000, 5000, "1-2 weeks",
     "Ablative laser resurfacing for deep wrinkles and significant sun damage."),
    ("Laser Tattoo Removal", "Laser & Light", 200, 500, "3-5 days",
     "Picosecond laser pulses break tattoo ink into particles the body clears."),
    ("Laser Vein Removal", "Laser & Light", 300, 600, "None",
     "Treats spider veins on the face and legs with targeted laser energy."),
    ("Clear + Brilliant", "Laser & Light", 400, 600, "1 day",
     "A gentle fractional laser for early signs of ageing and enlarged pores."),
    ("Halo Laser", "Laser & Light", 1500, 3000, "5-7 days",
     "Hybrid fractional laser that treats both surface and deeper skin damage."),
    ("CoolSculpting", "Body Contouring", 2000, 4000, "None",
     "Cryolipolysis freezes and permanently removes pockets of stubborn fat."),
    ("Emsculpt NEO", "Body Contouring", 750, 1000, "None",
     "Combines radiofrequency and electromagnetic muscle stimulation to burn fat "
     "and build muscle."),
    ("SculpSure", "Body Contouring", 1000, 1500, "None",
     "A 25-minute laser treatment that heats and destroys fat cells."),
    ("Liposuction", "Body Contouring", 3500, 9000, "1-2 weeks",
     "Surgical removal of fat deposits through small incisions."),
    ("Tummy Tuck", "Body Contouring", 6500, 12000, "2-4 weeks",
     "Abdominoplasty removes excess skin and repairs separated abdominal "
     "muscles."),
    ("Brazilian Butt Lift", "Body Contouring", 5000, 12000, "2-3 weeks",
     "Fat taken by liposuction is transferred to shape and lift the buttocks."),
    ("Arm Lift", "Body Contouring", 4000, 8000, "2-3 weeks",
     "Brachioplasty removes loose skin from the upper arms."),
    ("Thigh Lift", "Body Contouring", 5000, 9000, "2-4 weeks",
     "Removes excess skin and fat from the inner or outer thighs."),
    ("Rhinoplasty", "Facial Surgery", 6000, 15000, "1-2 weeks",
     "Reshapes the nose for appearance, breathing or both."),
    ("Facelift", "Facial Surgery", 9000, 25000, "2-3 weeks",
     "Lifts sagging tissue of the lower face and jowls for a lasting, natural "
     "result."),
    ("Neck Lift", "Facial Surgery", 6000, 15000, "2 weeks",
     "Tightens loose neck skin and muscle bands."),
    ("Blepharoplasty", "Facial Surgery", 3500, 7000, "1-2 weeks",
     "Eyelid surgery that removes hooding of the upper lids or bags under the "
     "eyes."),
    ("Brow Lift", "Facial Surgery", 4000, 8000, "1-2 weeks",
     "Raises low or heavy brows and smooths forehead lines."),
    ("Chin Implant", "Facial Surgery", 3000, 6000, "1-2 weeks",
     "A custom implant adds projection to a weak chin and balances the profile."),
    ("Otoplasty", "Facial Surgery", 3000, 6000, "1 week",
     "Ear surgery that sets back prominent ears or corrects their shape."),
    ("Buccal Fat Removal", "Facial Surgery", 3000, 5000, "1 week",
     "Removes the buccal fat pads for slimmer, more sculpted cheeks."),
    ("Breast Augmentation", "Breast Surgery", 5000, 10000, "1-2 weeks",
     "Silicone or saline implants increase breast size and fullness."),
    ("Breast Lift", "Breast Surgery", 5500, 11000, "2 weeks",
     "Mastopexy raises and reshapes sagging breasts."),
    ("Breast Reduction", "Breast Surgery", 6000, 12000, "2-3 weeks",
     "Reduces breast size to relieve back and shoulder pain."),
    ("Breast Implant Removal", "Breast Surgery", 4000, 9000, "1-2 weeks",
     "Removes or exchanges implants, often with the surrounding capsule."),
    ("Gynecomastia Surgery", "Breast Surgery", 4000, 8000, "1-2 weeks",
     "Male breast reduction by liposuction, gland excision or both."),
    ("Fat Transfer Breast Augmentation", "Breast Surgery", 7000, 12000,
     "1-2 weeks",
     "Enlarges the breasts modestly with your own fat instead of implants."),
    ("Mommy Makeover", "Breast Surgery", 12000, 25000, "3-4 weeks",
     "Combines breast surgery with a tummy tuck and liposuction after "
     "pregnancy."),
    ("FUE Hair Transplant", "Hair Restoration", 6000, 15000, "7-10 days",
     "Individual follicles are moved to thinning areas without a linear scar."),
    ("FUT Hair Transplant", "Hair Restoration", 5000, 12000, "10-14 days",
     "A strip of scalp provides many grafts in one session."),
    ("PRP Hair Restoration", "Hair Restoration", 500, 1200, "None",
     "Platelet-rich plasma injections stimulate thinning hair follicles."),
    ("Scalp Micropigmentation", "Hair Restoration", 1500, 4000, "2-3 days",
     "Cosmetic tattooing that recreates the look of a close-cropped hairline."),
    ("Low-Level Laser Therapy", "Hair Restoration", 500, 3000, "None",
     "Red light therapy to slow hair loss and thicken existing hair."),
    ("Eyebrow Transplant", "Hair Restoration", 3000, 7000, "5-7 days",
     "Transplanted follicles restore thin or over-plucked brows."),
    ("Ultherapy", "Skin Tightening", 1500, 4500, "None",
     "Focused ultrasound lifts the brow, neck and jawline from deep within."),
    ("Thermage", "Skin Tightening", 1500, 4000, "None",
     "Monopolar radiofrequency tightens skin on the face, eyes and body."),
    ("Sofwave", "Skin Tightening", 2000, 4000, "None",
     "Ultrasound beams stimulate collagen to smooth fine lines and lift."),
    ("Thread Lift", "Skin Tightening", 1500, 4500, "3-7 days",
     "Dissolvable PDO threads lift the cheeks and jowls without surgery."),
    ("Renuvion", "Skin Tightening", 3000, 8000, "1-2 weeks",
     "Helium plasma energy contracts loose skin under the chin or on the body."),
    ("Exilis", "Skin Tightening", 500, 1000, "None",
     "Radiofrequency with cooling firms skin and reduces small areas of fat."),
]  # fmt: skip

CITIES = [
    "New York",
    "Los Angeles",
    "Miami",
    "Chicago",
    "Houston",
    "Dallas",
    "Scottsdale",
    "Seattle",
]

# (title, credentials, categories the specialty performs, how many have it).
# Nurse practitioners (NP) and physician assistants (PA-C) are not "Dr.".
SPECIALTIES = [
    (
        "Board-Certified Plastic Surgeon",
        "MD",
        ["Body Contouring", "Breast Surgery", "Facial Surgery", "Injectables"],
        10,
    ),
    (
        "Facial Plastic Surgeon",
        "MD",
        ["Facial Surgery", "Injectables", "Skin Tightening"],
        6,
    ),
    (
        "Board-Certified Dermatologist",
        "MD",
        ["Injectables", "Skin Resurfacing", "Laser & Light", "Skin Tightening"],
        10,
    ),
    ("Aesthetic Nurse Practitioner", "NP", ["Injectables", "Skin Resurfacing"], 6),
    ("Hair Restoration Surgeon", "MD", ["Hair Restoration"], 4),
    (
        "Laser Physician Assistant",
        "PA-C",
        ["Laser & Light", "Body Contouring", "Skin Tightening"],
        4,
    ),
]

FIRST_NAMES = [
    "Amelia", "Benjamin", "Camila", "Daniel", "Elena", "Farid", "Grace", "Hiro",
    "Isabel", "James", "Kavya", "Lucas", "Maya", "Nathan", "Olivia", "Priya",
    "Rafael", "Sofia", "Thomas", "Valeria",
]  # fmt: skip
LAST_NAMES = [
    "Alvarez", "Brennan", "Chen", "Dubois", "Ellison", "Fischer", "Goldberg",
    "Haddad", "Ibrahim", "Jensen", "Kowalski", "Larsen", "Moreau", "Nakamura",
    "Okafor", "Patel", "Quinn", "Rossi", "Sato", "Thornton", "Ueda", "Vargas",
]  # fmt: skip

# (package name, procedures in it, discount off the sum of typical minimum prices)
PACKAGES = [
    ("Liquid Facelift", ["Botox", "Cheek Fillers", "Dermal Fillers"], 0.15),
    ("Lip & Smile Refresh", ["Lip Fillers", "Botox"], 0.10),
    ("Under-Eye Revival", ["Tear Trough Filler", "Microneedling"], 0.10),
    ("Profile Balancing", ["Jawline Filler", "Kybella"], 0.12),
    ("Glow Series", ["HydraFacial", "Chemical Peel", "Dermaplaning"], 0.20),
    ("Acne Scar Program", ["Microneedling", "Chemical Peel", "PRP Facial"], 0.15),
    ("Collagen Builder", ["Sculptra", "Morpheus8"], 0.10),
    ("Sun Damage Reset", ["IPL Photofacial", "Fraxel Laser"], 0.12),
    ("Smooth Skin Year", ["Laser Hair Removal", "Laser Vein Removal"], 0.15),
    ("Pre-Event Radiance", ["Clear + Brilliant", "HydraFacial", "Botox"], 0.15),
    ("Sculpt & Tone", ["CoolSculpting", "Emsculpt NEO"], 0.12),
    ("Body Refresh", ["Liposuction", "Arm Lift"], 0.10),
    ("Mommy Makeover Plus", ["Tummy Tuck", "Breast Lift", "Liposuction"], 0.15),
    ("Augmentation & Lift", ["Breast Augmentation", "Breast Lift"], 0.10),
    ("Rejuvenated Eyes", ["Blepharoplasty", "Brow Lift"], 0.10),
    ("Full Facial Rejuvenation", ["Facelift", "Neck Lift"], 0.12),
    ("Facial Harmony", ["Rhinoplasty", "Chin Implant"], 0.10),
    ("Hairline Restoration", ["FUE Hair Transplant", "PRP Hair Restoration"], 0.10),
    ("Non-Surgical Lift", ["Ultherapy", "Thread Lift"], 0.12),
    ("Tighten & Firm", ["Thermage", "Sofwave", "Exilis"], 0.15),
]


def slugify(text: str) -> str:
    """Turn a name into a URL slug: lower case, words joined by hyphens."""
    text = text.replace("&", " and ").replace("+", " plus ")
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def build_doctors(rng: random.Random) -> list[dict]:
    """Invent the demo doctors: names, specialties, cities, ratings and bios."""
    names = [f"{first} {last}" for first in FIRST_NAMES for last in LAST_NAMES]
    rng.shuffle(names)
    doctors = []
    for title, credentials, categories, count in SPECIALTIES:
        for _ in range(count):
            name = names.pop()
            city = CITIES[len(doctors) % len(CITIES)]
            years = rng.randint(6, 28)
            physician = credentials in PHYSICIAN_CREDENTIALS
            doctors.append(
                {
                    "name": name,
                    "slug": ("dr-" if physician else "") + slugify(name),
                    "title": title,
                    "credentials": credentials,
                    "city": city,
                    "rating": Decimal(rng.randint(40, 50)) / 10,
                    "review_count": rng.randint(8, 640),
                    "bio": (
                        f"{title} in {city} with {years} years of practice, "
                        f"focused on {' and '.join(c.lower() for c in categories[:2])}."
                    ),
                    "categories": categories,
                }
            )
    return doctors


def assign_procedures(doctors: list[dict], rng: random.Random) -> None:
    """Give each doctor procedures of their specialty, so every procedure has one."""
    by_category: dict[str, list[str]] = {}
    for name, category, *_ in PROCEDURES:
        by_category.setdefault(category, []).append(name)
    for doctor in doctors:
        offered = [p for c in doctor["categories"] for p in by_category[c]]
        doctor["procedures"] = set(rng.sample(offered, k=max(3, len(offered) * 2 // 3)))
    for name, category, *_ in PROCEDURES:
        if not any(name in d["procedures"] for d in doctors):
            qualified = [d for d in doctors if category in d["categories"]]
            min(qualified, key=lambda d: len(d["procedures"]))["procedures"].add(name)


def catalog_is_empty() -> bool:
    """Tell whether the catalog has no categories yet."""
    return db.session.scalar(select(Category.id).limit(1)) is None


def seed_demo_catalog() -> dict[str, int]:
    """Insert every demo item whose slug is missing; return how many were added.

    Running it again adds nothing, so it is safe on every start.
    """
    added = {"categories": 0, "procedures": 0, "doctors": 0, "packages": 0}
    categories = {c.name: c for c in db.session.scalars(select(Category))}
    for name, description in CATEGORIES:
        if name not in categories:
            categories[name] = Category(
                name=name, slug=slugify(name), description=description
            )
            db.session.add(categories[name])
            added["categories"] += 1

    procedures = {p.name: p for p in db.session.scalars(select(Procedure))}
    for name, category, low, high, recovery, description in PROCEDURES:
        if name not in procedures:
            procedures[name] = Procedure(
                name=name,
                slug=slugify(name),
                category=categories[category],
                short_description=description,
                price_min=low,
                price_max=high,
                recovery_time=recovery,
            )
            db.session.add(procedures[name])
            added["procedures"] += 1

    rng = random.Random(2026)
    plans = build_doctors(rng)
    assign_procedures(plans, rng)
    existing = list(db.session.scalars(select(Doctor)))
    doctors = {d.slug: d for d in existing}
    # A database seeded before credentials existed has its nurse practitioners
    # under "dr-" slugs: the same person (name and city) is not added again.
    by_person = {(d.name, d.city): d for d in existing}
    for plan in plans:
        if (plan["name"], plan["city"]) in by_person:
            doctors[plan["slug"]] = by_person[(plan["name"], plan["city"])]
        if plan["slug"] in doctors:
            continue
        doctor = Doctor(
            **{k: v for k, v in plan.items() if k not in {"categories", "procedures"}}
        )
        doctor.procedures = [procedures[name] for name in sorted(plan["procedures"])]
        doctors[plan["slug"]] = doctor
        db.session.add(doctor)
        added["doctors"] += 1

    existing_packages = set(db.session.scalars(select(Package.slug)))
    for index, (name, included, discount) in enumerate(PACKAGES):
        slug = slugify(name)
        if slug in existing_packages:
            continue
        eligible = [
            doctors[p["slug"]]
            for p in plans
            if set(included) <= p["procedures"] and p["slug"] in doctors
        ]
        if not eligible:
            continue
        doctor = eligible[index % len(eligible)]
        items = [procedures[p] for p in included]
        list_price = sum(p.price_min for p in items)
        db.session.add(
            Package(
                name=name,
                slug=slug,
                doctor=doctor,
                procedures=items,
                price=int(round(list_price * (1 - discount), -1)),
                description=(
                    f"{' + '.join(included)} with {doctor.display_name} "
                    f"in {doctor.city}, "
                    f"{round(discount * 100)}% less than booking them one by one."
                ),
            )
        )
        added["packages"] += 1
    db.session.commit()
    return added
