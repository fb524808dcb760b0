"""ovf-env.xml parsing (SPEC "Provisioning media"): the three serialisations peers use,
the refusals, and a property test that the parser only ever returns a Media or refuses."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bootagent.errors import MediaError
from bootagent.media.ovf import MAX_MEDIA, Media, parse

OVF = "http://schemas.dmtf.org/ovf/environment/1"
WA = "http://schemas.microsoft.com/windowsazure"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
PASSWORD = "S3cret-pass phrase!"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f me@host"


def fields(prefix: str = "", *, password: str = PASSWORD, custom: str | None = "I2Nsb3VkLWNvbmZpZwo=",
           extra: str = "") -> str:
    p = prefix
    out = [f"<{p}ConfigurationSetType>LinuxProvisioningConfiguration\n</{p}ConfigurationSetType>",
           f"<{p}HostName>media-host</{p}HostName>", f"<{p}UserName>azureuser</{p}UserName>",
           f"<{p}UserPassword>{password}</{p}UserPassword>",
           f"<{p}DisableSshPasswordAuthentication>false\n</{p}DisableSshPasswordAuthentication>",
           f"<{p}SSH><{p}PublicKeys><{p}PublicKey><{p}Fingerprint>EB0C</{p}Fingerprint>"
           f"<{p}Path>/home/azureuser/.ssh/authorized_keys</{p}Path><{p}Value>{KEY}</{p}Value>"
           f"</{p}PublicKey></{p}PublicKeys></{p}SSH>"]
    if custom is not None:
        out.append(f"<{p}CustomData>{custom}</{p}CustomData>")
    return "\n".join(out) + extra


def azure_form(body: str | None = None, platform: str = "<PreprovisionedVm>false</PreprovisionedVm>") -> bytes:
    """`wa:` sections, default-namespace children: Azure's media, WALinuxAgent's and
    azure-init's fixtures."""
    return f"""<?xml version="1.0" encoding="utf-8"?>
<Environment xmlns="{OVF}" xmlns:oe="{OVF}" xmlns:wa="{WA}" xmlns:i="{XSI}">
  <wa:ProvisioningSection>
    <wa:Version>1.0</wa:Version>
    <LinuxProvisioningConfigurationSet xmlns="{WA}" xmlns:i="{XSI}">
{fields() if body is None else body}
    </LinuxProvisioningConfigurationSet>
  </wa:ProvisioningSection>
  <wa:PlatformSettingsSection>
    <wa:Version>1.0</wa:Version>
    <PlatformSettings xmlns="{WA}" xmlns:i="{XSI}">
      <KmsServerHostname>kms.core.windows.net</KmsServerHostname>
      {platform}
      <PreprovisionedVMType i:nil="true" />
    </PlatformSettings>
  </wa:PlatformSettingsSection>
</Environment>
""".encode()


def wa_everywhere(body: str | None = None) -> bytes:
    return f"""<?xml version="1.0" encoding="utf-8"?>
<oe:Environment xmlns:oe="{OVF}" xmlns:wa="{WA}">
 <wa:ProvisioningSection><wa:Version>1.0</wa:Version>
  <wa:LinuxProvisioningConfigurationSet>
{fields("wa:") if body is None else body}
  </wa:LinuxProvisioningConfigurationSet>
 </wa:ProvisioningSection>
 <wa:PlatformSettingsSection><wa:Version>1.0</wa:Version><wa:PlatformSettings>
  <wa:PreprovisionedVm>false</wa:PreprovisionedVm></wa:PlatformSettings></wa:PlatformSettingsSection>
</oe:Environment>""".encode()


def ns0_ns1(body: str | None = None, platform: str = "") -> bytes:
    """cloud-init's form (its DataSourceAzure tests and its minimal media)."""
    return f"""<?xml version="1.0" encoding="utf-8"?>
<ns0:Environment xmlns="{OVF}" xmlns:ns0="{OVF}" xmlns:ns1="{WA}" xmlns:xsi="{XSI}">
<ns1:ProvisioningSection>
<ns1:Version>1.0</ns1:Version>
<ns1:LinuxProvisioningConfigurationSet>
{fields("ns1:") if body is None else body}
</ns1:LinuxProvisioningConfigurationSet>
</ns1:ProvisioningSection>
<ns1:PlatformSettingsSection>
<ns1:Version>1.0</ns1:Version>
<ns1:PlatformSettings>
<ns1:ProvisionGuestAgent>false</ns1:ProvisionGuestAgent>
<ns1:GuestAgentPackageName xsi:nil="true" />
{platform}
</ns1:PlatformSettings>
</ns1:PlatformSettingsSection>
</ns0:Environment>""".encode()


EXPECTED = Media(hostname="media-host", username="azureuser", password=PASSWORD,
                 disable_ssh_password_auth=False, custom_data="I2Nsb3VkLWNvbmZpZwo=",
                 public_keys=(("/home/azureuser/.ssh/authorized_keys", KEY),),
                 preprovisioned=False, preprovisioned_type=None)


@pytest.mark.parametrize("form", [azure_form, wa_everywhere, ns0_ns1])
def test_the_three_serialisations_are_one_document(form):
    assert parse(form()) == EXPECTED


def test_a_media_without_password_or_custom_data():
    """SSH-key VMs' media carry <UserPassword></UserPassword> and no CustomData."""
    media = parse(azure_form(fields(password="", custom=None)))
    assert media.password is None and media.custom_data is None
    assert media.username == "azureuser"


def test_the_password_is_kept_as_given_and_never_in_repr():
    media = parse(azure_form(fields(password="  spaced &amp; out  ")))
    assert media.password == "  spaced & out  "
    assert "spaced" not in repr(media) and "spaced" not in str(media)
    assert "(set)" in repr(media)


@pytest.mark.parametrize("spelling", ["PreprovisionedVMType", "PreprovisionedVmType"])
def test_both_spellings_of_the_preprovisioned_type(spelling):
    platform = f"<ns1:PreprovisionedVm>true</ns1:PreprovisionedVm><ns1:{spelling}>Savable</ns1:{spelling}>"
    media = parse(ns0_ns1(platform=platform))
    assert media.preprovisioned is True and media.preprovisioned_type == "Savable"


def test_elements_are_found_by_namespace_not_by_prefix():
    """A UserPassword in another namespace is not Azure's: it is not read."""
    body = fields(password="").replace("<UserPassword></UserPassword>",
                                       '<UserPassword xmlns="urn:other">not-this</UserPassword>')
    assert parse(azure_form(body)).password is None


# -- refusals ------------------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]>
<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1">&lol4;</Environment>"""
EXTERNAL = (b'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY x SYSTEM "file:///etc/shadow">]>'
            b'<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1">&x;</Environment>')


@pytest.mark.parametrize("data, says", [
    (BILLION_LAUGHS, "DTD"),
    (EXTERNAL, "DTD"),
    (azure_form()[:-40], "not well-formed"),
    (b"", "not well-formed"),
    (b"\x00\xff\xfe garbage", "not well-formed"),
    (azure_form() + b" " * MAX_MEDIA, "larger than"),
    (azure_form(fields() + "\n<UserPassword>second</UserPassword>"), "UserPassword appears twice"),
    (azure_form(fields() + "\n<CustomData>Zm9v</CustomData>"), "CustomData appears twice"),
    (ns0_ns1(platform="<ns1:PreprovisionedVMType>A</ns1:PreprovisionedVMType>"
                      "<ns1:PreprovisionedVmType>B</ns1:PreprovisionedVmType>"), "appears twice"),
    (azure_form(fields().replace("<UserName>azureuser</UserName>", "<UserName>  </UserName>")),
     "UserName is empty"),
    (azure_form(fields().replace("false\n</Disable", "maybe</Disable")), "DisableSshPasswordAuthentication"),
    (b'<Environment xmlns="urn:not-ovf"/>', "not Environment"),
    (f'<Environment xmlns="{OVF}"/>'.encode(), "no ProvisioningSection"),
])
def test_refusals_are_one_line_and_never_quote_the_password(data, says):
    with pytest.raises(MediaError) as caught:
        parse(data)
    message = str(caught.value)
    assert says in message
    assert "\n" not in message and PASSWORD not in message and "second" not in message


def test_two_configuration_sets_are_refused_but_versions_are_not_read():
    doubled = azure_form().replace(b"</wa:ProvisioningSection>",
                                   f'<LinuxProvisioningConfigurationSet xmlns="{WA}"/>'
                                   "</wa:ProvisioningSection>".encode())
    with pytest.raises(MediaError, match="LinuxProvisioningConfigurationSet appears twice"):
        parse(doubled)
    # Version occurs in each section (and twice in one would not matter: it is not read)
    assert parse(azure_form().replace(b"<wa:Version>1.0</wa:Version>",
                                      b"<wa:Version>1.0</wa:Version><wa:Version>2</wa:Version>")) == EXPECTED


# -- never crashes -------------------------------------------------------------------------

XMLISH = st.lists(st.sampled_from([
    "<", ">", "</", "/>", "<!DOCTYPE x>", "<!ENTITY a 'b'>", "&a;", "&amp;", "<![CDATA[x]]>",
    f'<Environment xmlns="{OVF}" xmlns:wa="{WA}">', "</Environment>",
    "<wa:ProvisioningSection>", "</wa:ProvisioningSection>",
    f'<LinuxProvisioningConfigurationSet xmlns="{WA}">', "</LinuxProvisioningConfigurationSet>",
    "<UserPassword>", "</UserPassword>", "<UserName>", "</UserName>", "<CustomData>", "</CustomData>",
    "<DisableSshPasswordAuthentication>", "</DisableSshPasswordAuthentication>", "true", "x",
    "<SSH><PublicKeys><PublicKey><Value>", "</Value></PublicKey></PublicKeys></SSH>", "\x00", "é",
]), max_size=30).map(lambda parts: "".join(parts).encode("utf-8", "surrogatepass"))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=512), XMLISH))
def test_the_parser_returns_a_media_or_refuses(data):
    try:
        result = parse(data)
    except MediaError as err:
        assert "\n" not in str(err)
    else:
        assert isinstance(result, Media)
