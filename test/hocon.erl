%% EMQX API double: hocon:load/1, which every EMQX 5 release ships (on a
%% real 5.3.2 node it returned {ok, Map} with binary keys). The project writes its
%% config.hocon in JSON syntax, which HOCON accepts, so JSON decoding stands
%% in for the real parser here.
-module(hocon).
-export([load/1]).
load(File) ->
    case file:read_file(File) of
        {ok, Bin} ->
            try
                {ok, emqx_double_json:decode(Bin)}
            catch
                _:Reason -> {error, {parse_error, Reason}}
            end;
        {error, Reason} ->
            {error, {Reason, File}}
    end.
