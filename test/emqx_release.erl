%% EMQX API double: emqx_release:version/0, from the double's mode.
-module(emqx_release).
-export([version/0, edition/0]).
version() -> emqx_double:version().
edition() -> ce.
