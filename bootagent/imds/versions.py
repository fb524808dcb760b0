"""The api-versions the agent supports, per IMDS category: one list each, in one place."""

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


def newest_supported(offered: list, supported: tuple = SUPPORTED_API_VERSIONS) -> str | None:
    """The newest version in `offered` that the agent supports (for that category), or None."""
    usable = [v for v in offered if isinstance(v, str) and v in supported]
    return max(usable) if usable else None


# The other IMDS categories, each with its own documented api-versions.
ATTESTED_SINCE = "2020-09-01"  # `bootagent attest` asks for licenseType-era documents
LOADBALANCER_SINCE = "2020-10-01"
SCHEDULED_EVENTS_VERSIONS = ("2017-11-01", "2019-01-01", "2019-08-01", "2020-07-01")
CATEGORY_VERSIONS = {
    "instance": SUPPORTED_API_VERSIONS,
    "attested": SUPPORTED_API_VERSIONS,
    "loadbalancer": tuple(v for v in SUPPORTED_API_VERSIONS if v >= LOADBALANCER_SINCE),
    "scheduledevents": SCHEDULED_EVENTS_VERSIONS,
}


def version_for(category: str, configured: str, since: str = "") -> str:
    """The api-version to ask `category` for: the configured one when that category
    documents it (and it is `since` or newer), else the category's newest."""
    usable = [v for v in CATEGORY_VERSIONS[category] if v >= since]
    return configured if configured in usable else max(usable)
