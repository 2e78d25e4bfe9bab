"""Claims on the units of a shared study folder (study/claims.py): held while the holder lives, however
long it is stopped, and free the moment it is killed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from dakter_scale.study.claims import Claim, held

HOLDER = """
import sys, time
from dakter_scale.study.claims import Claim
assert Claim(sys.argv[1], "a runner's unit").take()
print("held", flush=True)
time.sleep(600)
"""


def test_a_stopped_holder_keeps_its_claim_and_a_killed_one_frees_it(tmp_path):
    path = tmp_path / "claims" / "student-x.lock"
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        mine = Claim(path, "this runner's try")
        assert not mine.take() and Claim(path, "").holder()["pid"] == child.pid
        child.send_signal(signal.SIGSTOP)  # paused to free a core: no renewal, still its claim
        time.sleep(0.2)
        assert not mine.take()
        child.kill()
        child.wait(timeout=10)
        assert mine.take()  # the kernel dropped the dead holder's lock: no wait, no expiry
        assert not Claim(path, "a third runner").take()
        mine.release()
        assert Claim(path, "").holder() is None and Claim(path, "a third runner").take()
    finally:
        child.kill()


def test_held_waits_for_the_lock_of_a_read_modify_write(tmp_path):
    import threading

    order = []
    lock = tmp_path / "claims" / "timings.lock"

    def second() -> None:
        with held(lock):
            order.append("second")

    with held(lock):
        other = threading.Thread(target=second)
        other.start()
        time.sleep(0.3)
        order.append("first")
    other.join(timeout=10)
    assert order == ["first", "second"]
