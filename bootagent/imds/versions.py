"""The instance-metadata api-versions the agent supports: one list, in one place."""

SUPPORTED_API_VERSIONS = (
    "2019-06-01", "2019-06-04", "2019-08-01", "2019-08-15", "2019-11-01",
    "2020-06-01", "2020-07-15", "2020-09-01", "2020-10-01", "2020-12-01",
    "2021-01-01", "2021-02-01", "2021-03-01", "2021-05-01", "2021-08-01",
    "2021-10-01", "2021-11-01", "2021-11-15", "2021-12-13", "2023-07-01", "2023-11-15",
)
DEFAULT_API_VERSION = "2021-08-01"
USERDATA_SINCE = "2021-01-01"


def has_user_data(api_version: str) -> bool:
    return api_version >= USERDATA_SINCE


def newest_supported(offered: list) -> str | None:
    """The newest version in `offered` that the agent supports, or None."""
    usable = [v for v in offered if isinstance(v, str) and v in SUPPORTED_API_VERSIONS]
    return max(usable) if usable else None
