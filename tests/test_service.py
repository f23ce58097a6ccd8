"""recsys.service.LocalService: the real service in a child process, started, asked, stopped."""
from __future__ import annotations

import pytest

from recsys.exceptions import RecsysError
from recsys.service import LocalService, free_port


def test_a_local_service_answers_and_stops(models_root, synthetic, tmp_path):
    user = str(synthetic.users.ids[0])
    db = tmp_path / "feedback.db"  # its own store: never the demo's instance/feedback.db
    with LocalService(models_root, settings={"FEEDBACK_DB_URL": f"sqlite:///{db}"}) as service:
        answer = service.get(f"/v1/users/{user}/recommendations?k=3")
        assert len(answer["items"]) == 3 and answer["fallback"] is False
        assert service.get("/v1/users/nobody/recommendations?k=2")["fallback"] is True
        assert service.get("/v1/recommendations?k=2")["status"] == 404, "an error answer is its problem document"
        process = service.process
    assert process.poll() is not None, "stopped on leaving the block"
    assert db.exists(), "the service used the store it was given"


def test_a_service_that_cannot_start_says_why(tmp_path):
    port = free_port()
    with pytest.raises(RecsysError, match="exited with code"):
        LocalService(tmp_path / "no-bundle", port=port, timeout=30).start()
