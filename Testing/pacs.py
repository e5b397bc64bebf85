"""Debian's Orthanc with its DICOMweb plugin as a real PACS on localhost, in a temporary folder,
with one user (the tests' and the benchmark's); and a proxy in front of it that can cut uploads
mid-transfer (a PACS that stops while receiving)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
USER, PASSWORD = "lln", "test-password-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/dicom-web"
        self.proc = None

    def start(self) -> Orthanc:
        exe = shutil.which("Orthanc")
        if exe is None or not Path(PLUGIN).is_file():
            raise RuntimeError("Debian's orthanc and orthanc-dicomweb are needed (scripts/test.sh installs them)")
        self.folder.mkdir(parents=True, exist_ok=True)
        cfg = {"Name": "LLNTEST", "StorageDirectory": str(self.folder / "storage"),
               "IndexDirectory": str(self.folder / "index"), "HttpPort": self.port, "DicomServerEnabled": False,
               "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
               "Plugins": [PLUGIN], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
        (self.folder / "orthanc.json").write_text(json.dumps(cfg), encoding="utf-8")
        self.log = open(self.folder / "orthanc.log", "w", encoding="utf-8")
        self.proc = subprocess.Popen([exe, str(self.folder / "orthanc.json")], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        import requests

        for _ in range(100):
            try:
                if requests.get(f"http://127.0.0.1:{self.port}/system", auth=(USER, PASSWORD), timeout=1).ok:
                    return self
            except requests.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError(f"Orthanc did not start; see {self.folder / 'orthanc.log'}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.log.close()

    def client(self):
        import requests
        from dicomweb_client.api import DICOMwebClient

        s = requests.Session()
        s.auth = (USER, PASSWORD)
        return DICOMwebClient(self.url, session=s)

    def series_modalities(self, study_uid: str) -> list:
        found = self.client().search_for_series(study_instance_uid=study_uid)
        return sorted(s["00080060"]["Value"][0] for s in found)


class CuttingProxy:
    """Relays to `port`; an upload larger than `cut_after` bytes is cut there (both sides closed),
    as when a PACS stops in the middle of receiving."""

    def __init__(self, port: int, cut_after: int = 64 * 1024):
        self.target, self.cut_after = port, cut_after
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.cuts = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client):
        upstream = socket.create_connection(("127.0.0.1", self.target))

        def back():
            try:
                while data := upstream.recv(65536):
                    client.sendall(data)
            except OSError:
                pass
            finally:  # shutdown, not close: the other thread's recv holds the socket open otherwise
                try:
                    client.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        threading.Thread(target=back, daemon=True).start()
        sent = 0
        try:
            while data := client.recv(65536):
                if sent + len(data) > self.cut_after:
                    upstream.sendall(data[: self.cut_after - sent])
                    self.cuts += 1
                    break
                upstream.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for s in (upstream, client):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self):
        self.sock.close()
