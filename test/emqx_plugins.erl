%%--------------------------------------------------------------------
%% EMQX API double: emqx_plugins:get_config/1 (5.7+): {ok, Map} in 5.7-5.8,
%% a plain map from 5.9 (the double's mode decides). The config is what
%% EMQX would hold: the raw map with binary keys, no Avro defaults applied.
%%--------------------------------------------------------------------
-module(emqx_plugins).
-export([get_config/1]).
get_config(NameVsn) ->
    Config = persistent_term:get({emqx_double, plugin_config, NameVsn}, #{}),
    case emqx_double:config_api() of
        tuple_ok -> {ok, Config};
        plain_map -> Config
    end.
