"""Regenerate poetry.lock on machines whose package index serves only the simple API.

Poetry reads release metadata from the index's JSON API (``/pypi/NAME/VERSION/json``); the
registry these machines reach answers that with 404 but serves the simple API (PEP 503/691)
and the files themselves. This wrapper makes Poetry's default repository take release data
from the simple pages instead, exactly as it does for any other (legacy) source, so the lock
records the default source and the same hashes as anywhere else.

Usage: python .ci/lock.py [poetry lock options]   (needs poetry installed in that Python)
"""

from __future__ import annotations

import sys
from typing import Any

from poetry.console.application import main
from poetry.core.packages.package import Package
from poetry.core.version.pep440 import PEP440Version
from poetry.inspection.info import PackageInfo
from poetry.repositories.pypi_repository import PyPiRepository


def _release_info(self: PyPiRepository, name: Any, version: PEP440Version) -> dict[str, Any]:
    page = self._get_page(name)
    links = list(page.links_for_version(name, version))
    info = PackageInfo(
        name=name,
        version=version.text,
        summary="",
        requires_dist=[],
        requires_python=None,
        files=[],
        yanked=page.yanked(name, version),
        cache_version=str(self.CACHE_VERSION),
    )
    return self._links_to_data(links, info)


def _find_links(self: PyPiRepository, package: Package) -> list[Any]:
    return list(self._get_page(package.name).links_for_version(package.name, package.version))


PyPiRepository._get_release_info = _release_info  # type: ignore[method-assign]
PyPiRepository.find_links_for_package = _find_links  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.argv = ["poetry", "lock", *sys.argv[1:]]
    sys.exit(main())
