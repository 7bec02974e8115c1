"""Shared test fixtures."""

import pytest

#: a 3-layer toy binning (3 r bins x 2 alpha, 3 x 2, 4 x 1: 16 voxels) used by the CaloFlow tests
TINY_XML = """<Bins><Bin pid="11" name="electron">
<Layer id="0" r_edges="0,2,5,10" n_bin_alpha="2"/>
<Layer id="1" r_edges="0,2,5,10" n_bin_alpha="2"/>
<Layer id="2" r_edges="0,2,5,10,20" n_bin_alpha="1"/>
</Bin></Bins>"""


@pytest.fixture(scope="session")
def tiny_xml() -> str:
    """The text of the 3-layer toy binning XML (write it where the test needs the file)."""
    return TINY_XML
