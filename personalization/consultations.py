"""Consultation requests: a visitor asks a clinic to contact them about a doctor,
procedure or package. Personal data: kept apart from the interaction log, never
sent to AWS Personalize or Amplitude, erased with the visitor and after
CONSULTATION_RETENTION_DAYS."""

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from models import ConsultationRequest, Package, as_utc
from personalization.events import ItemKey

# Unambiguous characters for references read over the phone (no 0/O, 1/I/L).
REFERENCE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
REFERENCE_LENGTH = 8


@dataclass(frozen=True)
class Contact:
    """What the visitor wrote in the form, validated by the web layer."""

    name: str
    email: str | None
    phone: str | None
    preferred_date: date | None
    message: str
    consent_to_contact: bool


def new_reference() -> str:
    """A short random reference, like "K7QX-3MPA"."""
    chars = "".join(secrets.choice(REFERENCE_ALPHABET) for _ in range(REFERENCE_LENGTH))
    return f"{chars[:4]}-{chars[4:]}"


class Consultations:
    """Stores, lists and exports consultation requests."""

    def __init__(self, session, clock: Callable[[], datetime]):
        self.session = session
        self.clock = clock

    def create(
        self, visitor_id: str | None, subject: ItemKey, contact: Contact
    ) -> ConsultationRequest:
        """Store a request about a doctor, procedure or package. A package's
        request also names the package's doctor, who will answer it."""
        request = ConsultationRequest(
            reference=new_reference(),
            user_id=visitor_id,
            name=contact.name,
            email=contact.email,
            phone=contact.phone,
            preferred_date=contact.preferred_date,
            message=contact.message,
            consent_to_contact=contact.consent_to_contact,
            created_at=self.clock(),
        )
        if subject.kind == "package":
            request.package_id = subject.id
            request.doctor_id = self.session.scalar(
                select(Package.doctor_id).where(Package.id == subject.id)
            )
        elif subject.kind == "procedure":
            request.procedure_id = subject.id
        else:
            request.doctor_id = subject.id
        self.session.add(request)
        self.session.flush()
        return request

    def by_reference(self, reference: str) -> ConsultationRequest | None:
        return self.session.scalar(
            select(ConsultationRequest).where(
                ConsultationRequest.reference == reference
            )
        )

    def of_visitor(self, visitor_id: str) -> list[ConsultationRequest]:
        """The visitor's requests, oldest first."""
        return list(
            self.session.scalars(
                self.listing().where(ConsultationRequest.user_id == visitor_id)
            )
        )

    def since(self, moment: datetime | None = None) -> list[ConsultationRequest]:
        """Every request (made after `moment`), oldest first: the leads."""
        statement = self.listing()
        if moment is not None:
            statement = statement.where(ConsultationRequest.created_at >= moment)
        return list(self.session.scalars(statement))

    def listing(self):
        return (
            select(ConsultationRequest)
            .options(
                selectinload(ConsultationRequest.doctor),
                selectinload(ConsultationRequest.procedure),
                selectinload(ConsultationRequest.package),
            )
            .order_by(ConsultationRequest.created_at, ConsultationRequest.id)
        )


def as_record(request: ConsultationRequest) -> dict:
    """A request in plain fields: "download my data", `flask leads export`."""
    return {
        "reference": request.reference,
        "created_at": as_utc(request.created_at).isoformat(),
        "about": request.subject.display_name if request.subject else None,
        "doctor": request.doctor.display_name if request.doctor else None,
        "procedure": request.procedure.name if request.procedure else None,
        "package": request.package.name if request.package else None,
        "name": request.name,
        "email": request.email,
        "phone": request.phone,
        "preferred_date": request.preferred_date.isoformat()
        if request.preferred_date
        else None,
        "message": request.message,
        "consent_to_contact": request.consent_to_contact,
    }
