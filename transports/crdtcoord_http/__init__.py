"""crdtcoord_http: the aiohttp transport of crdtcoord (sync endpoints, metrics, dashboard).

Empty for now: the HTTP server and client arrive with the runtime. Importable so that the
distribution's layout is fixed from the first release.
"""

__all__: list[str] = []
