%%--------------------------------------------------------------------
%% EMQX API double: emqx_ctl (register_command/2,3, unregister_command/1,
%% print/1,2, usage/1), plus run_command/2 for tests, which runs a
%% registered command and returns what it printed.
%%--------------------------------------------------------------------
-module(emqx_ctl).

-export([register_command/2, register_command/3, unregister_command/1, print/1, print/2, usage/1]).
-export([run_command/2, commands/0]).

-define(KEY(Cmd), {?MODULE, command, Cmd}).

register_command(Cmd, MF) -> register_command(Cmd, MF, []).
register_command(Cmd, {M, F}, _Opts) when is_atom(Cmd) ->
    persistent_term:put(?KEY(Cmd), {M, F}),
    ok.

unregister_command(Cmd) ->
    persistent_term:erase(?KEY(Cmd)),
    ok.

commands() ->
    [Cmd || {?KEY(Cmd), _} <- persistent_term:get()].

print(Msg) -> print("~ts", [Msg]).
print(Format, Args) ->
    Text = io_lib:format(Format, Args),
    put(?MODULE, [get_output(), Text]),
    ok.

usage(Usages) ->
    [print("~-40s# ~ts~n", [Cmd, Desc]) || {Cmd, Desc} <- Usages],
    ok.

%% @doc `emqx ctl Cmd Args...': {ok, Output} or {error, unknown_command}.
run_command(Cmd, Args) ->
    case persistent_term:get(?KEY(Cmd), undefined) of
        undefined ->
            {error, unknown_command};
        {M, F} ->
            put(?MODULE, []),
            M:F(Args),
            {ok, unicode:characters_to_binary(erase(?MODULE))}
    end.

get_output() ->
    case get(?MODULE) of
        undefined -> [];
        O -> O
    end.
