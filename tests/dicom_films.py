"""DICOM films for the node's tests, written with pydicom from the bundled sample radiographs (uncompressed
8-bit MONOCHROME2), with made-up patient data; and the real compressed DICOMs of the shared data folder."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

CR = "1.2.840.10008.5.1.4.1.1.1"
DX = "1.2.840.10008.5.1.4.1.1.1.1"
SAMPLES = Path(__file__).resolve().parents[1] / "src" / "cxrad" / "data" / "samples"


def sample_images(n: int | None = None) -> list[Path]:
    """Bundled sample radiographs (kermany224 test JPEGs, then the others), sorted."""
    files = sorted((SAMPLES / "kermany224" / "test").rglob("*.jpeg")) + sorted((SAMPLES / "covid_hannover").rglob(
        "*.png"))
    return files[:n] if n else files


def film_dataset(image: Path, patient_id: str = "PAT-0001", patient_name: str = "Doe^Jane",
                 sop_class: str = CR, sop_uid: str | None = None, study_uid: str | None = None,
                 accession: str = "ACC0001", modality: str | None = None):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    grey = np.asarray(Image.open(image).convert("L"), np.uint8)
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid or generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid or generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, "19800101", "F"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "101010", "1", accession
    ds.ReferringPhysicianName, ds.Modality = "", modality or ("DX" if sop_class == DX else "CR")
    ds.SeriesNumber, ds.InstanceNumber, ds.BodyPartExamined = 1, 1, "CHEST"
    ds.PatientOrientation = ["L", "F"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = grey.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = grey.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    return ds


def encode(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write_films(folder: Path, n: int, **kw) -> list[Path]:
    """``n`` DICOM films (one per sample image, cycling) written to ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    images = sample_images()
    out = []
    for i in range(n):
        ds = film_dataset(images[i % len(images)], patient_id=f"PAT-{i:04d}", **kw)
        path = folder / f"film{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def c_store(paths_or_datasets, port: int, called: str = "CXRAD", calling: str = "TESTSCU", host: str = "127.0.0.1"):
    """C-STORE each dataset (or file) in one association, as sent; returns the status of each (None if none)."""
    from pydicom import dcmread
    from pynetdicom import AE

    datasets = [dcmread(p) if isinstance(p, (str, Path)) else p for p in paths_or_datasets]
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for sop_class, ts in {(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in datasets}:
        ae.add_requested_context(sop_class, [ts])
    assoc = ae.associate(host, port, ae_title=called)
    if not assoc.is_established:
        return None
    try:
        statuses = []
        for d in datasets:
            st = assoc.send_c_store(d)
            statuses.append(int(st.Status) if st and "Status" in st else None)
        return statuses
    finally:
        assoc.release()


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver:
    """A destination SCP (the PACS side of result delivery) on loopback that keeps what it is sent. ``fail``
    is a list of statuses answered to the first C-STOREs (0xA700: out of resources...), then success."""

    def __init__(self, ae_title: str = "PACS", fail: list[int] | None = None, port: int = 0, delay: float = 0.0,
                 on_store=None):
        import threading

        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.received: list = []  # (SOP Instance UID, dataset)
        self.requests = 0
        self.fail = list(fail or [])
        self.delay = delay  # seconds to wait before answering (after keeping the object)
        self.on_store = on_store  # called with each dataset kept
        self._lock = threading.Lock()
        ae = AE(ae_title=ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        self.server = ae.start_server(("127.0.0.1", port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])
        self.port = self.server.server_address[1]
        self.ae_title = ae_title

    def _store(self, event):
        with self._lock:
            self.requests += 1
            if self.fail:
                return self.fail.pop(0)
            ds = event.dataset
            ds.file_meta = event.file_meta
            self.received.append((str(ds.SOPInstanceUID), ds))
        if self.on_store is not None:
            self.on_store(ds)
        if self.delay:
            import time
            time.sleep(self.delay)
        return 0x0000

    def uids(self) -> list[str]:
        with self._lock:
            return [u for u, _ in self.received]

    def stop(self) -> None:
        self.server.shutdown()

    @property
    def destination(self) -> str:
        return f"{self.ae_title}@127.0.0.1:{self.port}"
