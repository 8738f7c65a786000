"""Collection specs: which garments go on which model photos, with which inputs.

A spec is a YAML or JSON file::

    name: fw26-denim                 # safe for object keys
    model_name: tryon-v1.6
    inputs: {mode: balanced, num_samples: 2}      # defaults for every item
    models:   [{id: ava, image: models/ava.jpg}]  # relative to the spec, fsspec URL or http(s) URL
    garments: [{id: jacket-01, image: s3://shop/jacket-01.jpg, inputs: {category: tops}}]
    pairs: all                       # cross product, or a list of {garment, model[, inputs]}

or a CSV of explicit pairs (:mod:`tryon.spec.csv_rows`).

- :mod:`tryon.spec.ids`: what can be an id, and the label that joins a garment and a model id.
- :mod:`tryon.spec.collection`: the spec itself (:class:`CollectionSpec` and its rows).
- :mod:`tryon.spec.csv_rows`: a CSV spec's columns, header and streamed rows.
- :mod:`tryon.spec.loaders`: a spec from a file or from parsed data (:func:`load_spec`).
- :mod:`tryon.spec.problems`: what is wrong with a spec (:class:`SpecError`, each problem naming
  row, field and value).
- :mod:`tryon.spec.validation`: every check before anything is spent (:func:`validate_spec`).
- :mod:`tryon.spec.items`: the items a spec makes (:class:`Item`, :func:`iter_items`).
- :mod:`tryon.spec.key`: what identifies an item's inputs and images (:func:`item_key`).
"""
