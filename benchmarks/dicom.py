"""Series per second of DICOM discovery (reading headers, grouping, classifying, naming) and of
conversion (dcm2niix, clean NIfTI) on a tree of many small series.

The tree: PATIENTS folders of one study each, every study with SERIES_PER_STUDY single-frame
series of SLICES slices of 64 x 64 int16 pixels (one in four a localiser of 3 slices, left out),
file names without extension, and a text file per patient (the files were just written, so both
discovery runs read them from the page cache); conversion runs with 1 and 2 workers, as
``morpho segment --workers``.

    python benchmarks/dicom.py [--patients N] [--series-per-study N] [--slices N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from morphometry.dicom_convert import convert_series
from morphometry.dicom_series import DicomOptions
from morphometry.inputs import survey


def write_series(folder: Path, patient: int, study: str, number: int, slices: int, rng: np.random.Generator) -> None:
    """One axial series of ``slices`` 64 x 64 slices, 1 x 1 x 3 mm; the first of a study is a localiser."""
    folder.mkdir(parents=True)
    series = generate_uid()
    localiser = number == 0
    for k in range(3 if localiser else slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        meta.MediaStorageSOPInstanceUID = uid = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, uid, "MR"
        ds.PatientName, ds.PatientID, ds.PatientAge, ds.PatientSex = f"P^{patient}", f"ID{patient}", "060Y", "F"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = study, series, number, k + 1
        ds.StudyDate, ds.SeriesDescription, ds.MRAcquisitionType = "20200101", f"series {number}", "2D"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER" if localiser else "M"]
        ds.RepetitionTime, ds.EchoTime, ds.SliceThickness = "500", "10", "3"
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.ImagePositionPatient = ["-32", "-32", str(3 * k)]
        ds.PixelSpacing = ["1", "1"]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = 64
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = rng.integers(0, 1000, (64, 64), dtype=np.int16).tobytes()
        ds.save_as(folder / f"{k:05d}", enforce_file_format=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=50)
    parser.add_argument("--series-per-study", type=int, default=4)
    parser.add_argument("--slices", type=int, default=24)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "export"
        for p in range(args.patients):
            study = generate_uid()
            for s in range(args.series_per_study):
                write_series(tree / f"PAT{p:04d}" / "STUDY" / f"SER{s:02d}", p, study, s, args.slices, rng)
            (tree / f"PAT{p:04d}" / "notes.txt").write_text("exported\n")
        files = sum(1 for f in tree.rglob("*") if f.is_file())
        series = args.patients * args.series_per_study
        options = DicomOptions(id_key=Path(tmp) / "bench.key")
        rows = []
        for run in ("discovery, 1st run", "discovery, 2nd run"):
            start = time.perf_counter()
            found = survey([tree], options)
            seconds = time.perf_counter() - start
            rows.append((run, series, files, seconds))
        kept = found.records
        assert len(kept) == args.patients * (args.series_per_study - 1)
        for workers in (1, 2):
            out = Path(tmp) / f"converted{workers}"
            start = time.perf_counter()
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(lambda r, out=out: convert_series(r.series, out / f"{r.scan_id}.nii.gz", r.scan_id),
                              kept))
            seconds = time.perf_counter() - start
            rows.append((f"conversion, {workers} worker(s)", len(kept), len(kept) * args.slices, seconds))
    print(f"tree: {series} series ({len(kept)} kept, {series - len(kept)} localisers), {files} files, "
          f"{args.slices} slices of 64 x 64 per series")
    print("| step | series | files | seconds | series/s | files/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, n_series, n_files, seconds in rows:
        print(f"| {name} | {n_series} | {n_files} | {seconds:.2f} | {n_series / seconds:.1f} "
              f"| {n_files / seconds:.0f} |")


if __name__ == "__main__":
    main()
