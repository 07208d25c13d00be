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
