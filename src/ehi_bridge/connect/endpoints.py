"""HTTP routes of the connect feature."""

from fastapi import APIRouter

router = APIRouter()
