"""Scrape an OpenMetrics endpoint and print every sample as JSON, parsed by
the official Prometheus Python client's OpenMetrics parser (which refuses
what the format does not allow)."""

import json
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families

with urllib.request.urlopen(sys.argv[1], timeout=10) as response:
    text = response.read().decode()
samples = []
for family in text_string_to_metric_families(text):
    for sample in family.samples:
        samples.append({"name": sample.name, "labels": sample.labels, "value": sample.value, "type": family.type})
print(json.dumps(samples))
