"""Issue 19: writers of the same file in one process (the Ray driver's threads) never share a temporary
name, so one's rename cannot take away the file another is about to rename."""

from __future__ import annotations

import threading

from batchgen.outputs import gallery, metadata_index
from batchgen.outputs.atomic import temp_path, write_text_atomic
from batchgen.store import Store


def test_temporary_names_differ_between_threads(tmp_path):
    final = tmp_path / "index.html"
    names = []

    def take():
        names.append(temp_path(final))

    threads = [threading.Thread(target=take) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(names)) == 2


def _hammer(target, rounds: int, errors: list) -> None:
    try:
        for _ in range(rounds):
            target()
    except Exception as exc:  # noqa: BLE001 - the test reports whatever broke
        errors.append(exc)


def test_two_threads_write_gallery_and_index_of_one_out(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    Store(out).close()
    errors: list = []
    contents = [f"<html>{'x' * 5000}{i}</html>" for i in range(2)]

    def gallery_writer():
        store = Store(out)  # one connection per thread, as the Ray driver's threads have
        try:
            gallery.write_gallery(out, store)
            metadata_index.rebuild(out, store)
        finally:
            store.close()

    def text_writer(i):
        return lambda: write_text_atomic(out / "page.html", contents[i])

    threads = [threading.Thread(target=_hammer, args=(gallery_writer, 40, errors)) for _ in range(2)]
    threads += [threading.Thread(target=_hammer, args=(text_writer(i), 200, errors)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert (out / "page.html").read_text() in contents  # whole, never a mix or a stub
    assert (out / gallery.GALLERY_PAGE).read_text().rstrip().endswith("</html>")
    assert not list(out.glob(".*.partial"))
