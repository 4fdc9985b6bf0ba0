"""HTTP routes of the ops feature."""

from fastapi import APIRouter

router = APIRouter()
