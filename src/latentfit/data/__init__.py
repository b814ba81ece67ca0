"""The data layer: the datasets' files fetched and verified (sources), the IDX format, preprocessing."""
