"""HTTP routes of the api feature."""

from fastapi import APIRouter

router = APIRouter()
