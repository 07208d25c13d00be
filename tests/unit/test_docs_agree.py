"""The docs, the command's help and the code say the same about what inbox_purge keeps."""

from pathlib import Path

from inbox.management.commands.inbox_purge import Command
from inbox.models import Status
from inbox.operations import DEDUP_PROTECTED, PURGEABLE

ROOT = Path(__file__).resolve().parents[2]


def test_the_dedup_window_protects_processed_and_dead_rows_and_every_doc_says_so():
    """README and docs/operations.md said rejected rows were kept for the window; the code
    kept only processed ones, and let --include-dead delete dead rows inside it."""
    assert set(DEDUP_PROTECTED) == {Status.DONE, Status.DEAD}
    assert Status.REJECTED in PURGEABLE and Status.REJECTED not in DEDUP_PROTECTED
    texts = {
        "README.md": (ROOT / "README.md").read_text(),
        "docs/operations.md": (ROOT / "docs/operations.md").read_text(),
        "docs/settings.md": (ROOT / "docs/settings.md").read_text(),
        "inbox_purge --help": Command.help,
    }
    for where, text in texts.items():
        flat = " ".join(text.lower().split())
        assert "processed and dead rows" in flat or "processed or dead inbox rows" in flat, (
            f"{where} does not say the dedup window keeps processed and dead rows"
        )
        assert "rejected inbox rows outside the dedup window" not in flat, where


def test_the_dashboard_and_the_operations_page_use_exactly_the_metrics_that_exist():
    """docs/grafana-dashboard.json and docs/operations.md name no metric the code lacks, and
    the operations page names every one."""
    import json
    import re

    import prometheus_client

    from inbox_outbox import metrics

    metrics._get()
    exported = {
        family.name
        for family in prometheus_client.REGISTRY.collect()
        if family.name.startswith("inbox_outbox_")
    } | {f"inbox_outbox_{name}" for name in metrics.GAUGES}
    samples = {f"{n}{suffix}" for n in exported for suffix in ("", "_total", "_bucket")}
    dashboard = json.loads((ROOT / "docs/grafana-dashboard.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"inbox_outbox_\w+", target["expr"])
    }
    assert used <= samples, used - samples
    documented = set(re.findall(r"`(inbox_outbox_\w+)`", (ROOT / "docs/operations.md").read_text()))
    assert documented <= samples, documented - samples
    missing = {n for n in exported if n not in documented and f"{n}_total" not in documented}
    assert not missing, f"docs/operations.md omits {missing}"
