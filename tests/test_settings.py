"""Settings: the shipped files load, and mistakes are refused with the file named."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from lus_pacs.errors import ConfigError
from lus_pacs.settings import DicomDestination, Settings, load_settings
from tests.tools import refused_by_cli, run_cli

CONFIG = Path(__file__).resolve().parents[1] / "config"


@pytest.mark.parametrize("path", sorted(CONFIG.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_configuration_loads(path: Path) -> None:
    settings = load_settings(path)
    assert settings.ae_title


def test_the_example_file_states_the_embedded_defaults() -> None:
    assert load_settings(CONFIG / "lus-pacs.toml") == Settings()


def test_overrides_win_and_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        'port = 104\n[[destinations]]\nname = "pacs"\nae_title = "PACS"\n'
        'host = "127.0.0.1"\nport = 4242\n'
    )
    settings = load_settings(path, port=11112)
    assert settings.port == 11112
    assert settings.destination("pacs").port == 4242
    with pytest.raises(ConfigError, match="'nowhere' is not configured"):
        settings.destination("nowhere")
    path.write_text("port = 70000\n")
    with pytest.raises(ConfigError, match=r"node\.toml: invalid configuration"):
        load_settings(path)


def test_an_unknown_model_is_refused_when_the_node_loads(tmp_path: Path) -> None:
    from lus_pacs.pipeline import Models

    with pytest.raises(ConfigError, match=r"'pneumothorax' is unknown.*available families are"):
        Models.load(Settings(data_dir=tmp_path, models=("b_lines", "pneumothorax")))


def test_a_misspelt_model_in_the_settings_file_gets_a_suggestion(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('models = ["b_lines", "severty"]\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert str(path) in message
    assert "'severty' is unknown; did you mean 'severity'?" in message


def test_a_bad_settings_file_is_one_line_naming_the_keys_not_a_traceback(tmp_path: Path) -> None:
    # Issue 19, case 12: a misspelt key printed a 53-line traceback.
    path = tmp_path / "node.toml"
    path.write_text('ae_titel = "NODE"\n[segmentation]\nmc_sample = 3\n')
    done = run_cli("serve", "--config", str(path), check=False)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr
    assert str(path) in line
    assert "ae_titel: unknown setting" in line
    assert "segmentation.mc_sample: unknown setting" in line


def test_a_relative_data_dir_is_taken_from_the_working_folder_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job store records its files' paths: relative ones, recorded by a node started in
    one folder, named nothing for `lus-pacs prune` run from another, which marked the study
    pruned and removed none of its files, for good."""
    monkeypatch.chdir(tmp_path)
    settings = load_settings(None, data_dir="rel/node", calibration="site.json")
    monkeypatch.chdir(tmp_path.parent)
    assert settings.incoming_dir == tmp_path / "rel" / "node" / "incoming"
    assert settings.calibration == tmp_path / "site.json"
    assert settings.models_dir.is_absolute()


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ('ae_title = "LÜSPACS"', "printable ASCII"),
        ('allowed_calling_aes = ["SCANNER-OF-WARD-12"]', "1 to 16 characters"),
        ('calling_ae_hosts = { "A\\\\B" = ["10.0.0.1"] }', "without a backslash"),
        ("metrics_port = 11112", "metrics_port and port are both 11112"),
        (  # re.error is no ValueError: it left as a traceback
            '[[zone_rules]]\nattribute = "SeriesDescription"\npattern = "(?P<zone>R[1-9]"',
            "is not a regular expression",
        ),
        ("retry_base_s = 600\nretry_max_s = 5", "retry_base_s (600) is over retry_max_s (5)"),
        (
            '[[destinations]]\nname = "me"\nae_title = "LUSPACS"\nhost = "localhost"\nport = 11112',
            "is this node itself",
        ),
    ],
)
def test_settings_that_would_fail_once_running_are_refused_at_load(
    tmp_path: Path, setting: str, message: str
) -> None:
    """Each was accepted, then failed after the models had loaded (a traceback at start: the
    AE titles, the ports) or at every delivery (the node as its own destination, retried for
    a day)."""
    path = tmp_path / "node.toml"
    path.write_text(setting + "\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(path)


def test_a_node_on_every_address_may_send_to_another_host_with_its_ae_title_and_port() -> None:
    remote = DicomDestination(name="pacs", ae_title="LUSPACS", host="pacs.example", port=11112)
    Settings(host="0.0.0.0", destinations=(remote,), accept_any_calling_ae=True)


def test_spaces_around_an_allowed_ae_title_are_not_part_of_it() -> None:
    """pynetdicom strips a calling AE title: "SCANNER1 " in the allow-list refused SCANNER1."""
    assert Settings(allowed_calling_aes=("SCANNER1 ",)).allowed_aes == ("SCANNER1",)


def test_the_default_zone_rules_are_valid() -> None:
    """They are built unchecked (the check imports pydicom); checked here."""
    from lus_pacs.settings import DEFAULT_ZONE_RULES, ZoneRule

    for rule in DEFAULT_ZONE_RULES:
        assert ZoneRule.model_validate(rule.model_dump()) == rule


def test_the_sample_settings_name_every_setting() -> None:
    """The README says config/lus-pacs.toml lists every key: runtime, encoders, the
    consolidation's saliency, a destination's associations and a DICOMweb timeout were not
    there, so a site could not learn of them from it."""
    import re

    from lus_pacs.settings import (
        ConsolidationSettings,
        DicomDestination,
        SegmentationSettings,
        WebDestination,
    )

    text = (CONFIG / "lus-pacs.toml").read_text()

    def named(key: str) -> bool:
        return bool(re.search(rf"^# ?{key} =|^{key} =|^#? ?\[\[?{key}\]\]?$", text, re.MULTILINE))

    models = (Settings, SegmentationSettings, ConsolidationSettings, DicomDestination)
    keys = {k for model in (*models, WebDestination) for k in model.model_fields}
    assert not [k for k in sorted(keys) if not named(k)]


def test_metrics_can_be_turned_off_in_the_settings_file(tmp_path: Path) -> None:
    """The sample said "remove the key to serve none", which served the default port: a second
    node on the host died on it. TOML has no null; false says none."""
    path = tmp_path / "node.toml"
    path.write_text("metrics_port = false\n")
    assert load_settings(path).metrics_port is None
    path.write_text("")
    assert load_settings(path).metrics_port == 9464


def test_a_settings_path_that_is_no_readable_toml_is_a_config_error(tmp_path: Path) -> None:
    """A folder, or a file in Latin-1, ended every command with a traceback."""
    with pytest.raises(ConfigError, match="cannot read the configuration file"):
        load_settings(tmp_path)
    latin1 = tmp_path / "node.toml"
    latin1.write_bytes('data_dir = "/srv/m\u00fcller"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_settings(latin1)
    refused_by_cli("status", "--config", str(tmp_path), saying="cannot read the configuration file")


def test_a_port_another_program_holds_is_refused_before_the_models_load(tmp_path: Path) -> None:
    """serve loaded and warmed the models, recovered the store, then ended with a traceback
    (Address already in use)."""
    from lus_pacs.node import check_ports

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        settings = Settings(host="127.0.0.1", port=taken, metrics_port=None, data_dir=tmp_path)
        with pytest.raises(ConfigError, match=rf"cannot listen for DICOM on 127\.0\.0\.1:{taken}"):
            check_ports(settings)
        with pytest.raises(ConfigError, match=r"cannot listen for metrics"):
            check_ports(settings.model_copy(update={"port": 0, "metrics_port": taken}))
    check_ports(settings)  # free again
    check_ports(settings.model_copy(update={"host": ""}))  # any address, as the servers take ""
    check_ports(settings.model_copy(update={"host": "localhost"}))
