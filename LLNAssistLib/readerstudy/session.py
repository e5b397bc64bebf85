"""One reader's reading session, as the Slicer "Reader study" section drives it: the current
case with only what its session may show, ratings, submit-and-advance, the case to preload, the
time on the current case. All state is in the study, so a restart resumes exactly here."""

from __future__ import annotations

import datetime as _dt
from typing import Optional

from .study import Study, _parse


class ReadingSession:
    def __init__(self, study: Study, reader: str):
        self.study = study
        self.reader = reader
        self.current: Optional[dict] = None
        self.advance()

    def advance(self) -> Optional[dict]:
        """Moves to the reader's next available read and opens it (starts its timer)."""
        nxt = self.study.next_read(self.reader)
        if nxt is not None and nxt["available"]:
            read = self.study.open_read(self.reader, nxt["session"], nxt["case_id"])
            nxt["read_id"] = read["read_id"]
            nxt["view"] = self.study.case_view(self.reader, nxt["session"], nxt["case_id"])
        self.current = nxt
        return nxt

    @property
    def done(self) -> bool:
        return self.current is None

    @property
    def waiting(self) -> str:
        """Why the next read cannot open yet (washout), or ''."""
        return "" if self.current is None or self.current["available"] else self.current["waiting_reason"]

    def progress_text(self) -> str:
        if self.current is None:
            return "all cases read"
        c = self.current
        return f"session {c['session']}: case {c['done'] + 1} of {c['total']} ({c['modality']})"

    def seconds_on_case(self, now: Optional[_dt.datetime] = None) -> float:
        if not self.current or "read_id" not in self.current:
            return 0.0
        row = self.study.db.one("SELECT started_at FROM reads WHERE read_id = ?", (self.current["read_id"],))
        return ((now or self.study.clock()) - _parse(row[0])).total_seconds()

    def rate(self, rating: int, call: Optional[bool] = None, point=None, node: Optional[str] = None,
             most_suspicious: bool = False, comment: str = "", region: Optional[str] = None,
             side: Optional[str] = None) -> dict:
        c = self._require_current()
        return self.study.record_rating(reader=self.reader, session=c["session"], case=c["case_id"], rating=rating,
                                        call=call, point=point, node=node, most_suspicious=most_suspicious,
                                        comment=comment, region=region, side=side)

    def ratings(self) -> list[dict]:
        c = self._require_current()
        return self.study.ratings_of(c["read_id"])

    def submit(self) -> Optional[dict]:
        """Submits the current read and advances; returns the next case (or None)."""
        c = self._require_current()
        self.study.submit_read(self.reader, c["session"], c["case_id"])
        return self.advance()

    def peek_next(self) -> Optional[dict]:
        """The case after the current one in this session (to preload its image), without opening it."""
        c = self.current
        if c is None:
            return None
        row = self.study.db.one(
            "SELECT a.case_id, c.image FROM assignments a JOIN cases c ON c.case_id = a.case_id WHERE a.reader_id = ? "
            "AND a.session = ? AND a.position > ? AND NOT EXISTS (SELECT 1 FROM reads r WHERE r.reader_id = "
            "a.reader_id AND r.case_id = a.case_id AND r.session = a.session) ORDER BY a.position LIMIT 1",
            (self.reader, c["session"], c["position"]))
        return {"case_id": row[0], "image": row[1]} if row else None

    def _require_current(self) -> dict:
        from ..errors import InputError

        if self.current is None or "read_id" not in self.current:
            raise InputError(self.waiting or "no case to read: all assigned cases are read")
        return self.current
