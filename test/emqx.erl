%% EMQX API double: emqx:data_dir/0.
-module(emqx).
-export([data_dir/0]).
data_dir() -> emqx_double:data_dir().
