"""Model bundles shipped with the package (``starter/``: the default of ``morpho segment``)."""
