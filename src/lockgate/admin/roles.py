"""Console roles from group membership: `admin.roles` in the manifest, plus reviewers.

admin: everything. auditor: reads everything, decides nothing. reviewer: the review queue
of the requests whose reviewer groups they are in (members of any approval rule's reviewer
groups are reviewers too). Everyone signed in sees their own sessions and requests.
"""

from __future__ import annotations

from collections.abc import Iterable

from lockgate.config.model import Manifest

ADMIN, AUDITOR, REVIEWER = "admin", "auditor", "reviewer"


def roles_for(manifest: Manifest, groups: Iterable[str]) -> tuple[str, ...]:
    """The console roles a member of `groups` holds, in a fixed order."""
    mine = set(groups)
    mapping = manifest.admin.roles if manifest.admin else None
    out: list[str] = []
    if mapping is not None and mine & set(mapping.admin):
        out.append(ADMIN)
    if mapping is not None and mine & set(mapping.auditor):
        out.append(AUDITOR)
    reviewer_groups = set(mapping.reviewer) if mapping is not None else set()
    for rule in manifest.approvals.rules:
        reviewer_groups |= set(rule.reviewers)
    if mine & reviewer_groups:
        out.append(REVIEWER)
    return tuple(out)


def reads_everything(roles: Iterable[str]) -> bool:
    """Admins and auditors see every session, review, grant and token."""
    return bool({ADMIN, AUDITOR} & set(roles))
