"""Forms people fill in on the site (Flask-WTF: CSRF token, server-side checks
with a message next to each field): the consultation request, and the admin
dashboard's login."""

import re
from datetime import date, timedelta

from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    DateField,
    PasswordField,
    StringField,
    TextAreaField,
)
from wtforms.fields import EmailField, TelField
from wtforms.validators import (
    DataRequired,
    Email,
    Length,
    Optional,
    Regexp,
    ValidationError,
)

from personalization.consultations import Contact

# Digits with the separators people type: "+1 (305) 555-0142".
PHONE = re.compile(r"^\+?[0-9 ()./-]+$")
PHONE_DIGITS = (7, 15)  # E.164 allows at most 15
# A consultation is booked within a year.
LATEST_PREFERRED_DATE = timedelta(days=365)
# Control characters other than tab and newline: nothing a person types.
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def strip(value):
    """Drop the spaces people type around a value."""
    return value.strip() if isinstance(value, str) else value


def no_control_characters(_form, field) -> None:
    if field.data and CONTROL.search(field.data):
        raise ValidationError("Remove the invisible control characters.")


class ConsultationForm(FlaskForm):
    """Ask a clinic to contact you: name, email and/or phone, a preferred date,
    a message, and consent to be contacted."""

    name = StringField(
        "Your name",
        validators=[
            DataRequired("Tell us your name."),
            Length(max=100, message="Keep your name under 100 characters."),
            no_control_characters,
        ],
        filters=[strip],
    )
    email = EmailField(
        "Email",
        validators=[
            Optional(),
            Length(max=254, message="That email address is too long."),
            Email("Enter an email address like name@example.com."),
        ],
        filters=[strip],
    )
    phone = TelField(
        "Phone",
        validators=[
            Optional(),
            Length(max=32, message="That phone number is too long."),
            Regexp(PHONE, message="Use digits, spaces, +, ( ) and - only."),
        ],
        filters=[strip],
    )
    preferred_date = DateField(
        "Preferred date (optional)",
        validators=[Optional()],
        format="%Y-%m-%d",
    )
    message = TextAreaField(
        "Message (optional)",
        validators=[
            Optional(),
            Length(max=2000, message="Keep your message under 2,000 characters."),
            no_control_characters,
        ],
    )
    consent = BooleanField(
        "The clinic may contact me about this request by email or phone.",
        validators=[
            DataRequired("We can only pass on your request with your consent.")
        ],
    )
    # The honeypot: hidden from people (CSS, aria-hidden, no tab stop); bots
    # that fill every field fill it.
    website = StringField("Leave this field empty")

    def validate_phone(self, field) -> None:
        digits = sum(char.isdigit() for char in field.data or "")
        if field.data and not PHONE_DIGITS[0] <= digits <= PHONE_DIGITS[1]:
            raise ValidationError("A phone number has 7 to 15 digits.")

    def validate_preferred_date(self, field) -> None:
        if field.data is None:
            return
        today = date.today()
        if field.data < today:
            raise ValidationError("Choose today or a later date.")
        if field.data > today + LATEST_PREFERRED_DATE:
            raise ValidationError("Choose a date within the next year.")

    def validate(self, extra_validators=None) -> bool:
        valid = super().validate(extra_validators)
        typed = "".join(self.preferred_date.raw_data or []).strip()
        if typed and self.preferred_date.data is None:
            # WTForms says "Not a valid date value": say what to type instead.
            self.preferred_date.errors = ["Enter a date like 2027-01-31."]
        if not self.email.data and not self.phone.data and not self.email.errors:
            self.email.errors = [
                *self.email.errors,
                "Give an email address or a phone number, so the clinic can reply.",
            ]
            valid = False
        return valid

    @property
    def is_spam(self) -> bool:
        return bool(self.website.data)

    def contact(self) -> Contact:
        """What the visitor wrote, ready to store."""
        return Contact(
            name=self.name.data,
            email=self.email.data or None,
            phone=self.phone.data or None,
            preferred_date=self.preferred_date.data,
            message=(self.message.data or "").strip(),
            consent_to_contact=bool(self.consent.data),
        )


class LoginForm(FlaskForm):
    """Sign in to the admin dashboard."""

    username = StringField(
        "Username",
        validators=[DataRequired("Enter your username."), Length(max=80)],
        filters=[strip],
    )
    # Long enough for any passphrase, short enough that hashing stays cheap.
    password = PasswordField(
        "Password",
        validators=[DataRequired("Enter your password."), Length(max=1024)],
    )
