"""HTTP routes of the dashboard feature."""

from fastapi import APIRouter

router = APIRouter()
