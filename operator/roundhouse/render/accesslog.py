"""The access-log lines of a frontend: spec.accessLog as HAProxy directives.

One line per request (TCP: per connection) on the proxy's stdout, in a fixed,
space-separated format that carries what an operator looks for and skips what costs the
most for little: HAProxy's `option httplog` prints the accept date with localtime and
strftime-like formatting, captured headers and queue counters; this format prints the
accept time as Unix seconds and milliseconds (the container runtime stamps each line
too), which measured about a quarter cheaper per logged request (bench/overhead.py).

HTTP:  client:port unix_s.ms frontend route backend/server Tq/Tw/Tc/Tr/Ta status bytes
       termination_state "request line"
TCP:   client:port unix_s.ms frontend - backend/server Tw/Tc/Tt bytes termination_state

`route` is a ReverseProxy's route (the HAProxy name of the host and route that matched,
`-` for none, and always `-` on a LoadBalancer). Sampled mode decides per request with
`set-log-level silent`, which skips building the line at all (HAProxy's `log ... sample`
would build every line and drop most).
"""

from __future__ import annotations

from roundhouse.graph.types import Frontend, ProxyGraph

HTTP_FORMAT = ("%ci:%cp %Ts.%ms %ft {route} %b/%s %Tq/%Tw/%Tc/%Tr/%Ta %ST %B %tsc "
               "%{{+Q}}r")
TCP_FORMAT = "%ci:%cp %Ts.%ms %ft - %b/%s %Tw/%Tc/%Tt %B %ts"
# The route a ReverseProxy's routing rules chose (HAProxy prints "-" when unset).
ROUTE = "%[var(txn.rh_route)]"


def access_log_lines(graph: ProxyGraph, frontend: Frontend) -> list[str]:
    log = graph.access_log
    if log.mode == "Disabled":
        return ["no log"]
    if frontend.mode == "http":
        route = ROUTE if frontend.routing else "-"
        lines = [f'log-format "{HTTP_FORMAT.format(route=route)}"']
        if log.mode == "Sampled":
            # Decided on the server's response: what never reaches one (the proxy's own
            # 404/403/429/redirects, 502/503/504) is always logged, and so is every 5xx.
            lines.append("http-response set-log-level silent if !{ status ge 500 } "
                         f"{{ rand({log.sample_one_in}) gt 0 }}")
        return lines
    lines = [f'log-format "{TCP_FORMAT}"']
    if log.mode == "Sampled":
        lines.append("tcp-request content set-log-level silent if "
                     f"{{ rand({log.sample_one_in}) gt 0 }}")
    return lines
