%%--------------------------------------------------------------------
%% The second VM of emqx_offline_cassandra_spool_tests' SIGKILL test: it
%% starts the NIF with Cassandra away (a port nothing listens on) and a
%% disk buffer, stores N messages, acks every Every-th of them, waits until
%% the stats say every write is in the spool and synced, prints
%% "ready <os pid>" and waits to be killed with SIGKILL.
%% Parameters come from the environment (SPOOL_CHILD_*), set by the test.
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_spool_child).

-export([fill/0, msgid/2]).

-define(NIF, emqx_offline_cassandra_nif).

fill() ->
    Dir = list_to_binary(os:getenv("SPOOL_CHILD_DIR")),
    Topic = list_to_binary(os:getenv("SPOOL_CHILD_TOPIC")),
    BaseUs = list_to_integer(os:getenv("SPOOL_CHILD_BASE_US")),
    N = list_to_integer(os:getenv("SPOOL_CHILD_N")),
    Every = list_to_integer(os:getenv("SPOOL_CHILD_ACK_EVERY")),
    ok = ?NIF:start(#{
        <<"servers">> => <<"127.0.0.1:1">>,
        <<"username">> => <<"root">>,
        <<"password">> => <<"public">>,
        <<"buffer_mode">> => <<"disk">>,
        <<"spool_dir">> => Dir,
        <<"spool_sync_interval">> => 100
    }),
    lists:foreach(
        fun(I) ->
            MsgId = msgid(BaseUs, I),
            ok = ?NIF:store(#{topic => Topic, msgid => MsgId, payload => integer_to_binary(I), qos => 1}),
            %% An ack made while Cassandra is away: its delete is spooled too.
            I rem Every =:= 0 andalso (ok = ?NIF:delete(Topic, MsgId))
        end,
        lists:seq(1, N)
    ),
    Writes = N + N div Every,
    wait_spooled(Writes),
    io:format("ready ~s~n", [os:getpid()]),
    receive after infinity -> ok end.

%% The msgid of message I: publish time BaseUs + I, shaped like EMQX's GUIDs.
msgid(BaseUs, I) ->
    <<(BaseUs + I):64, 16#ABCDEF:48, 0:16>>.

wait_spooled(Writes) ->
    case ?NIF:stats() of
        {ok, #{spooled := Writes, buffered := Writes, spool_unsynced := 0}} ->
            ok;
        _ ->
            timer:sleep(20),
            wait_spooled(Writes)
    end.
