"""The node's settings: one validated model, loaded once by the CLI and passed down."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from lus_pacs.domain import OutputKind
from lus_pacs.errors import ConfigError
from lus_pacs.families.registry import FAMILIES


class ZoneRule(BaseModel):
    """Finds the lung zone in a DICOM attribute: ``attribute`` is its keyword
    (``SeriesDescription``) or its tag (``(0019,1010)``, ``00191010``: a vendor's private
    one), ``pattern`` a regular expression whose named group ``zone`` is the zone label
    (R1..R14, L1..L14)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    attribute: str
    pattern: str

    @field_validator("attribute")
    @classmethod
    def _names_an_attribute(cls, value: str) -> str:
        # A misspelt keyword matched nothing, without a word: every cine lost its zone and
        # left the LUS score.
        attribute_tag(value)
        return value

    @property
    def tag(self) -> int:
        """The attribute's tag."""
        return attribute_tag(self.attribute)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        if "(?P<zone>" not in value:
            raise ValueError(f"zone pattern {value!r} needs a named group (?P<zone>...)")
        try:
            re.compile(value)
        except re.error as exc:  # not a ValueError: it went out as a traceback
            raise ValueError(f"zone pattern {value!r} is not a regular expression: {exc}") from exc
        return value


def attribute_tag(attribute: str) -> int:
    """The tag of a DICOM keyword, or of a tag written ``(gggg,eeee)``, ``gggg,eeee`` or
    ``ggggeeee``.

    Raises
    ------
    ValueError
        Neither a keyword pydicom knows nor a tag.
    """
    from pydicom.datadict import tag_for_keyword  # not at import: the CLI's help is quick

    tag = tag_for_keyword(attribute.strip())
    if tag is not None:
        return int(tag)
    digits = re.fullmatch(r"\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?", attribute.strip())
    if digits is None:
        raise ValueError(
            f"{attribute!r} is neither a DICOM keyword (such as SeriesDescription) nor a tag "
            "such as (0019,1010)"
        )
    return int(digits[1] + digits[2], 16)


MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
"""The bundles shipped beside the package (``models/`` of the repository)."""

_ZONE = (
    r"(?i)(?<![a-z0-9])(?:zone\s*)?"
    r"(?P<zone>R(?:0?[1-9]|1[0-4])|L(?:0?[1-9]|1[0-4])(?!-\d))(?![a-z0-9])"
)
"""R or L and a zone number of 1-14 (of the 8-, 12- and 14-zone protocols), alone: not a linear
probe's name such as L12-4 or L38, which scanners write beside the zone (an L zone followed by
a dash and a digit is taken for one; "R1-2" and "R2.1", a zone and its clip, stay zones). Only
letters and digits join it to a word: "Lung_L2" names zone L2 (a word boundary counted the
underscore as a letter)."""

DEFAULT_ZONE_RULES = (  # built unchecked: checking reads pydicom's dictionary, slow to import
    ZoneRule.model_construct(attribute="SeriesDescription", pattern=_ZONE),
    ZoneRule.model_construct(attribute="ImageComments", pattern=_ZONE),
)


class TlsFiles(BaseModel):
    """DICOM TLS of one end of associations: PEM files and whether the peer must present a
    certificate (see :mod:`lus_pacs.tls`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    certificate: Path | None = None
    """This end's certificate (chain), PEM: the listener's (required) or a client's."""
    private_key: Path | None = None
    """Its private key, PEM, unencrypted (keep the file readable by the node's user only)."""
    ca_bundle: Path | None = None
    """The CAs that sign the peers' certificates; a client without one trusts the system's."""
    require_peer_certificate: bool = True
    """Listener: scanners must present a certificate signed by ``ca_bundle``."""
    server_name: str | None = None
    """Client: the name the peer's certificate must carry; the destination's host when None."""


def _ae_title(value: str) -> str:
    """An AE title as DICOM has it (PS3.5, AE): 1-16 characters of the default repertoire, no
    backslash or control character; spaces around it are not part of it (pynetdicom strips a
    calling AE's, so an allow-list entry "SCANNER1 " refused that scanner for good)."""
    title = value.strip(" ")
    if not 1 <= len(title) <= 16:
        raise ValueError(f"an AE title has 1 to 16 characters, not {len(title)} ({value!r})")
    if any(not 32 <= ord(c) < 127 or c == "\\" for c in title):
        raise ValueError(f"an AE title is printable ASCII without a backslash ({value!r})")
    return title


AeTitle = Annotated[str, AfterValidator(_ae_title)]


class _Receiver(BaseModel):
    """What a destination of either kind is sent."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    output_kinds: tuple[OutputKind, ...] | None = None
    """The kinds of result object sent to it, of those the node makes
    (:attr:`Settings.output_kinds`); None: all of them. A PACS that takes no LABELMAP SEG
    (a class of 2024, unknown to many) refuses it at every attempt: leave ``seg`` out for it."""

    def takes(self, kind: str) -> bool:
        """Whether a result object of ``kind`` is sent to it."""
        return self.output_kinds is None or kind in self.output_kinds


class DicomDestination(_Receiver):
    """A DICOM node results are sent to by C-STORE."""

    name: str
    ae_title: AeTitle
    host: str
    port: int = Field(gt=0, lt=65536)
    tls: TlsFiles | None = None
    """Associate over TLS: the destination's certificate verified against ``ca_bundle`` and
    its host name, this node's ``certificate`` presented when given."""
    associations: int = Field(default=4, ge=1, le=16)
    """Associations a result set is sent over at once (its instances dealt among them): a PACS
    that takes each instance slowly takes them faster in parallel. 1: one association, the
    instances in order. Orthanc serves 4 at once by default (``DicomThreadsCount``)."""


class WebDestination(_Receiver):
    """A DICOMweb server results are sent to by STOW-RS (PS3.18), e.g. Orthanc's DICOMweb
    plugin at ``http://pacs:8042/dicom-web``. Credentials come from a file or an environment
    variable, never from the settings text or the command line."""

    name: str
    url: str = Field(pattern=r"^https?://")
    """The DICOMweb root; instances are POSTed to ``<url>/studies``."""
    username: str | None = None
    """HTTP basic authentication, with the password from ``password_file`` or
    ``password_env``."""
    password_file: Path | None = None
    password_env: str | None = None
    token_file: Path | None = None
    """A bearer token (first line of the file), or from ``token_env``."""
    token_env: str | None = None
    ca_bundle: Path | None = None
    """For https: the CAs that sign the server's certificate (the system's when None)."""
    timeout_s: float = Field(default=60.0, gt=0)

    @field_validator("url")
    @classmethod
    def _no_credentials_in_url(cls, url: str) -> str:
        # The URL is in every log line, status row and audit record of a delivery. Any "@":
        # a password holding "#", "?" or "/" ends the authority before its "@".
        if "@" in url:
            raise ValueError(
                f"{_SECRET_IN_URL} would be written to logs and the job store; give "
                "username with password_file or password_env (or a token) instead (an @ "
                "that is part of the path: write it %40)"
            )
        return url

    @model_validator(mode="after")
    def _one_credential(self) -> WebDestination:
        given = [
            k
            for k in ("password_file", "password_env", "token_file", "token_env")
            if getattr(self, k)
        ]
        if len(given) > 1:
            raise ValueError(f"give one credential source, not {', '.join(given)}")
        if self.username and not any(k.startswith("password") for k in given):
            raise ValueError("username needs password_file or password_env")
        if any(k.startswith("password") for k in given) and not self.username:
            raise ValueError("a password needs a username")
        return self


class SegmentationSettings(BaseModel):
    """Which frames of a cine the segmentation ensemble labels, and how many dropout passes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    frames: Literal["best", "key", "all", "every"] = "best"
    """``best``: the cine's first key frame, the one its KOS marks best in set and a viewer
    opens first; ``key``: every key frame the other models chose (best, B-line and
    highest-severity frame); ``all``: every frame; ``every``: every ``every``-th frame. Each
    frame costs about 0.5 s with the default 10 Monte-Carlo dropout passes while two workers
    share two CPU cores (the model card), a quarter of a cine's processing: ``best`` keeps the
    node faster than the cine plays (bench/realtime.py)."""
    every: int = Field(default=10, ge=1)
    mc_samples: int | None = Field(default=None, ge=0)
    """Monte-Carlo dropout passes per frame; None takes the bundle's default (10); 0 runs once
    with dropout off and reports no uncertainty."""


class ConsolidationSettings(BaseModel):
    """How much of a cine the consolidation model's saliency boxes cover."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    saliency_frames: int | None = Field(default=None, ge=0)
    """Frames that get saliency boxes when a consolidation is found (the most salient ones);
    None takes the bundle's default (2); 0 reports presence only."""
    saliency: Literal["gradient", "occlusion"] = "gradient"
    """How the boxes are found: gradient x input (one backward pass, hits the consolidation
    more often on held-out simulated cines) or occlusion sensitivity (seconds a cine)."""


class Settings(BaseModel):
    """Everything configurable about the node; defaults run it with no file at all."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ae_title: AeTitle = "LUSPACS"
    host: str = "127.0.0.1"
    """Address the DICOM listener binds to; 0.0.0.0 to accept scanners on the network."""
    port: int = Field(default=11112, ge=0, lt=65536)
    """DICOM port; 0 takes any free port (tests, demo)."""
    allowed_calling_aes: tuple[AeTitle, ...] = ()
    """Calling AE titles allowed to associate; empty accepts any (logged as a warning), which
    on an address other than loopback needs :attr:`accept_any_calling_ae`."""
    calling_ae_hosts: dict[AeTitle, tuple[str, ...]] = Field(default_factory=dict)
    """Per calling AE title, the addresses (IP addresses or host names) it may associate from,
    as Orthanc's ``DicomModalities`` bind a modality to its host: an association of that title
    from any other address is rejected. The titles are allowed as if listed in
    :attr:`allowed_calling_aes`; a title not bound here may come from any address."""
    tls: TlsFiles | None = None
    """The listener speaks DICOM TLS only (a plain association to its port fails): its
    ``certificate`` and ``private_key``, and the ``ca_bundle`` that signed the scanners'
    certificates, which are required unless ``require_peer_certificate`` is false."""
    accept_any_calling_ae: bool = False
    """Listen on an address other than loopback with no allow-list, accepting any sender: the
    node refuses to start that way unless this is true."""
    unsupported_sop_class: Literal["refuse", "ignore"] = "refuse"
    """An instance that is not an ultrasound or secondary-capture image: refused with status
    0x0122, or acknowledged and dropped."""
    changed_instance: Literal["reprocess", "refuse"] = "reprocess"
    """A SOP Instance UID received again with other content (pixels or attributes): processed
    again, its earlier results marked replaced and the new ones given new UIDs, or refused with
    status 0xC111 (the stored copy and its results kept). Either way the log says so."""
    max_associations: int = Field(default=32, ge=1)
    """Associations the listener serves at once; one more is rejected (transient, local
    limit), logged with its calling AE and address."""
    max_associations_per_peer: int = Field(default=16, ge=1)
    """Associations one address may hold at once; its next connection is closed at once,
    logged with the address, so that one host cannot take every association."""
    network_timeout_s: float = Field(default=30.0, gt=0)
    """A connection silent this long is closed: a half-open or idle peer cannot hold one of
    the :attr:`max_associations` for longer."""
    acse_timeout_s: float = Field(default=15.0, gt=0)
    """Seconds allowed for association negotiation and release."""
    dimse_timeout_s: float = Field(default=60.0, gt=0)
    """Seconds allowed for each DIMSE message of an association."""
    max_instance_bytes: int = Field(default=4 * 1024**3, ge=1)
    """An instance larger than this is refused (status 0xA700 with the limit named, or a
    failure line in ``process``) before anything reads it."""
    min_free_bytes: int = Field(default=1024**3, ge=0)
    """Free space the data_dir's file system keeps: below it the listener refuses instances
    (0xA700, "disk nearly full": the sender retries later) and ``/healthz`` is unhealthy, so
    that what was acknowledged can still be processed, its results written and the job store
    updated. 0 turns both off."""
    max_cine_frames: int = Field(default=10_000, ge=1)
    """A cine of more frames is refused with the limit named."""
    max_cine_pixels: int = Field(default=1_500_000_000, ge=1)
    """A cine of more pixels (frames x rows x columns) is refused with the limit named. The
    decoded cine takes one byte a pixel, and the node's peak memory is about that plus 1 GB."""
    max_cine_s: float = Field(default=3600.0, gt=0)
    """A cine whose processing runs longer than this (from when its worker starts it) has hung
    its worker (a decoder or library that never returns): it fails with the time named, is not
    queued again by a restart (``lus-pacs retry`` tries it again), and ``/healthz`` is
    unhealthy until its worker is free, since a thread cannot be stopped from outside and
    still holds its core and memory; a restart frees it. Its pixels are no longer counted
    against ``concurrent_pixels`` (every cine that did not fit beside it waited, the whole node
    with them, until a restart). ``lus-pacs reprocess`` kills such a
    worker process (or Ray actor) and goes on with a new one; its local pool, when none of
    its cines in flight was started and nothing started or ended for this long, is killed
    whole and its cines tried again alone. The default is far above what
    the largest cine the limits admit takes on two cores."""
    concurrent_pixels: int = Field(default=100_000_000, ge=1)
    """The workers start a cine only while the cines in process hold at most this many pixels
    (frames x rows x columns) together; a larger cine waits for the others and runs alone. Two
    ordinary cines (a 60-frame 640 x 480 cine is 18 M pixels) run side by side; two long ones
    do not add up (two cines of 300 frames at 1080p and 1000 at 640 x 480 side by side peaked at
    1.74-1.96 GB, one after the other at 1.37-1.47, bench/memory.py --together)."""
    audit_max_bytes: int = Field(default=50 * 1024**2, ge=1024)
    """Size at which the audit trail (``audit/audit.jsonl`` in :attr:`data_dir`) is rotated."""
    audit_backups: int = Field(default=10, ge=1)
    """Rotated audit files kept (``audit.jsonl.1`` the newest)."""
    metrics_port: int | None = Field(default=9464, ge=0, lt=65536)
    """Port of the Prometheus metrics (``/metrics``), on the listener's ``host``; 0 takes any
    free port, None (``false`` in the settings file, which has no null) serves none."""
    destinations: tuple[DicomDestination, ...] = ()
    """Where results are sent by C-STORE, each by its own exporter (a hung PACS delays only its
    own results); with none, results stay in the results folder."""
    runtime: Literal["onnx", "torch"] = "onnx"
    """Where the networks of the key-frame, severity and segmentation families run: ONNX
    Runtime (each network exported in memory as it loads; two to three times faster on a CPU,
    ``bench/realtime.py``) or eager PyTorch, the reference they are tested against (outputs
    within 1e-4, the same findings)."""
    web_destinations: tuple[WebDestination, ...] = ()
    """Where results are sent by DICOMweb STOW-RS, with the same retries, exporter per
    destination and exactly-once bookkeeping as :attr:`destinations`."""
    workers: int = Field(default=2, ge=1)
    """Cines processed at once, within :attr:`concurrent_pixels`. ``lus-pacs serve`` gives each
    worker's networks its share of the cores (one each on two cores): two cines at a time keep
    both cores busy while the other cine's Python work runs (decode; the result objects are
    made in the :attr:`encoders`). On bench/realtime.py's exam on two cores, before the encoding
    processes: real-time factor 0.47-0.54 and peak 0.84-0.94 GB with two workers (0.62-0.69 with
    two and 0.79-0.83 with one before the allocator's and ONNX Runtime's page faults were
    removed; one worker gives a lone cine its results a little sooner)."""
    encoders: int = Field(default=2, ge=0)
    """Processes of the node that make and write the result objects (``lus-pacs serve``;
    ``0``: each worker makes its own in its thread). Making them is pure Python, which in a
    worker's thread holds the other worker's cine up on the interpreter's lock; in processes
    of their own it does not. On bench/realtime.py's exam on two cores, alternate runs: real-time
    factor 0.48-0.59 with two, 0.53-0.66 with none (two faster in each of eleven rounds, by
    1.03-1.17x); one process gave 0.51-0.65 (mean 0.58 against 0.53 for two in the same four
    rounds: the workers often finish a cine at once). Since segmentation costs a third less
    (its networks arranged for the dropout passes) they gain less: 0.42-0.48 with two, 0.44-0.48
    with none, two faster in seven of eight pairs (0.94-1.09x). The processes hold about 0.2 GB
    together (a node's peak on those six cines 0.86 GB -> 1.06 GB, counting shared pages
    once)."""
    output_kinds: tuple[OutputKind, ...] = (
        OutputKind.SR,
        OutputKind.KOS,
        OutputKind.SEG,
        OutputKind.SEG_BINARY,
        OutputKind.PR,
        OutputKind.STUDY_SR,
    )
    """Result objects sent: per cine the SR, the KOS of key frames, the presentation state
    drawing boxes and labels on the key frames (GSPS or CSPS as the source's colour) and, when
    the segmentation model runs, the LABELMAP SEG of the score masks and the same masks as a
    BINARY SEG (for viewers that know no LABELMAP; both with the plane geometry OHIF needs),
    optionally a FRACTIONAL
    SEG of the Monte-Carlo dropout uncertainty; per study, once it is complete, the summary
    SR."""
    models_dir: Path = Field(default_factory=lambda: MODELS_DIR)
    models: tuple[str, ...] = (
        "b_lines",
        "consolidation",
        "severity",
        "segmentation",
        "key_frames",
        "assessment",
    )
    """The model families the node runs (:data:`lus_pacs.families.registry.FAMILIES`), each
    from its bundle under ``models_dir``."""
    calibration: Path | None = None
    """A site's calibration of the B-line, consolidation and severity decisions
    (``lus-pacs calibrate``,
    :mod:`lus_pacs.families.calibration`); None runs the bundles as shipped."""
    segmentation: SegmentationSettings = Field(default_factory=SegmentationSettings)
    consolidation: ConsolidationSettings = Field(default_factory=ConsolidationSettings)
    study_quiet_s: float = Field(default=30.0, gt=0)
    """A study is complete this long after its last instance (or on association release)."""
    retention_days: float | None = Field(default=None, gt=0)
    """When set, every hour the node removes the received instances and result files of the
    studies done (summarised, all sent) and quiet for this many days (:mod:`lus_pacs.retention`;
    the job store keeps their rows). None: nothing is removed (``lus-pacs prune`` by hand)."""
    retry_budget: int = Field(default=300, ge=0)
    """Delivery attempts after the first before a result is marked failed. With the default
    backoff (2 s doubling to 300 s) 300 attempts span about a day: a PACS down for its
    maintenance, or overnight, gets its results when it is back, without ``lus-pacs retry``
    (6 attempts, the default before, gave up after two minutes)."""
    retry_base_s: float = Field(default=2.0, gt=0)
    retry_max_s: float = Field(default=300.0, gt=0)
    data_dir: Path = Field(default=Path("lus-pacs-data"), validate_default=True)
    pocus_dir: Path = Path("../shared/data/pocus")
    zone_rules: tuple[ZoneRule, ...] = Field(default=DEFAULT_ZONE_RULES)
    default_fps: float = Field(default=30.0, gt=0)
    """Frame rate assumed for a cine whose file gives none."""

    @field_validator("data_dir", "models_dir", "calibration")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        """A relative path is taken from the working folder once, when the settings load: the
        job store records its files' paths, and a relative one recorded by a node started in
        one folder named nothing for a ``lus-pacs prune`` run from another (it marked the
        study pruned and removed nothing, for good)."""
        return None if value is None else value.expanduser().absolute()

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _no_metrics(cls, value: object) -> object:
        # TOML has no null: "false" says none (it read as port 0, any free port, before).
        return None if value is False else value

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        names = self.destination_names
        if len(set(names)) != len(names):
            raise ValueError(f"destination names must be unique; got {list(names)}")
        return self

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        """Settings that each look valid but together fail only once the node runs."""
        if self.port and self.metrics_port == self.port:
            raise ValueError(f"metrics_port and port are both {self.port}")
        if self.retry_base_s > self.retry_max_s:
            raise ValueError(
                f"retry_base_s ({self.retry_base_s:g}) is over retry_max_s ({self.retry_max_s:g})"
            )
        for d in self.destinations:
            here = d.host in (self.host, *_LOOPBACK_HOSTS)
            if here and d.port == self.port and d.ae_title == self.ae_title:
                raise ValueError(
                    f"destination {d.name!r} is this node itself ({d.ae_title}@{d.host}:{d.port}): "
                    "its results would be sent to it, refused, and retried for a day"
                )
        return self

    @property
    def destination_names(self) -> tuple[str, ...]:
        """Every destination, DIMSE and DICOMweb, by name."""
        return tuple(d.name for d in self.destinations) + tuple(
            d.name for d in self.web_destinations
        )

    @property
    def allowed_aes(self) -> tuple[str, ...]:
        """Every calling AE title allowed: :attr:`allowed_calling_aes` and those bound to
        addresses in :attr:`calling_ae_hosts`."""
        return tuple(dict.fromkeys((*self.allowed_calling_aes, *self.calling_ae_hosts)))

    @property
    def audit_path(self) -> Path:
        return self.data_dir / "audit" / "audit.jsonl"

    @property
    def incoming_dir(self) -> Path:
        return self.data_dir / "incoming"

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"

    @property
    def store_path(self) -> Path:
        return self.data_dir / "jobs.sqlite"

    def destination(self, name: str) -> DicomDestination:
        for d in self.destinations:
            if d.name == name:
                return d
        raise ConfigError(
            f"destination {name!r} is not configured; known: {[d.name for d in self.destinations]}"
        )

    def web_destination(self, name: str) -> WebDestination | None:
        """The DICOMweb destination of that name, None when it is a DIMSE one."""
        return next((d for d in self.web_destinations if d.name == name), None)


_SECRET_IN_URL = "credentials in the URL"
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def load_settings(path: Path | None, **overrides: object) -> Settings:
    """Settings from a TOML file, or the embedded defaults when ``path`` is None; ``overrides``
    (command-line options) win over both. The enabled models must be families the node ships
    (:data:`~lus_pacs.families.registry.FAMILIES`)."""
    try:
        raw: dict[str, object] = {}
        if path is not None:
            with path.open("rb") as f:
                raw = tomllib.load(f)
        settings = Settings.model_validate({**raw, **overrides})
        FAMILIES.check(settings.models, where=f"{path or 'settings'}: models")
        return settings
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such configuration file") from exc
    except UnicodeDecodeError as exc:  # TOML is UTF-8
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from exc
    except OSError as exc:  # a folder, or unreadable
        raise ConfigError(f"{path}: cannot read the configuration file: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path or 'settings'}: not valid TOML: {exc}") from exc
    except ValidationError as exc:
        raise ConfigError(f"{path or 'settings'}: invalid configuration: {_problems(exc)}") from exc


def _problems(exc: ValidationError) -> str:
    """Each setting at fault and what is wrong with it, on one line."""
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        if error["type"] == "extra_forbidden":
            problems.append(f"{key}: unknown setting")
        elif _SECRET_IN_URL in error["msg"]:  # the value is not repeated: it holds a secret
            problems.append(f"{key}: {error['msg']}")
        else:
            problems.append(f"{key}: {error['msg']} (got {error.get('input')!r})")
    return "; ".join(problems)
